"""Quantize the bundled tiny LLaDA-style model to W4A4 with RTN, save it, reload it, and report.

    python examples/quickstart.py [--kind llada|dream] [--out DIR]

Everything runs offline on the CPU: the model is a tiny randomly initialised checkpoint written by
``fair_calib_hf.reference_models.save_tiny`` and loaded exactly as users load the real LLaDA/Dream
checkpoints (``AutoModel.from_pretrained(..., trust_remote_code=True)``).
"""
import argparse
import json
import os
import tempfile

import torch
from transformers import AutoModel, AutoTokenizer

import fair_calib_hf  # registers the "fair_calib" quantization method
from fair_calib_hf import FairCalibConfig, W4A4Linear
from fair_calib_hf.reference_models import save_tiny

CALIBRATION_TEXTS = [
    "Question: 17 + 25 = ? Answer: 42.",
    "def square(x):\n    return x * x\n",
    "Masked diffusion models fill an answer over many denoising steps.",
    "The write frontier is where a token is committed and never changed again.",
]


def _size_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["llada", "dream"], default="llada")
    parser.add_argument("--out", default=None, help="where to write the checkpoints (default: a temp dir)")
    args = parser.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="fair_calib_quickstart_")

    fp_dir = save_tiny(args.kind, os.path.join(root, f"tiny-{args.kind}"), seed=0)
    print(f"[1/4] wrote a tiny {args.kind} checkpoint to {fp_dir} ({_size_mb(fp_dir):.2f} MB of safetensors)")

    fp = AutoModel.from_pretrained(fp_dir, trust_remote_code=True)
    cfg = FairCalibConfig(method="rtn", w_bits=4, a_bits=4, calibration_dataset=CALIBRATION_TEXTS, seq_len=128)
    model = AutoModel.from_pretrained(fp_dir, trust_remote_code=True, quantization_config=cfg)
    report = model.hf_quantizer.calibration_report
    print(f"[2/4] calibrated on load: {report.summary()}")

    q_dir = os.path.join(root, f"tiny-{args.kind}-w4a4-rtn")
    model.save_pretrained(q_dir)
    AutoTokenizer.from_pretrained(fp_dir, trust_remote_code=True).save_pretrained(q_dir)
    qc = json.load(open(os.path.join(q_dir, "config.json")))["quantization_config"]
    print(f"[3/4] saved to {q_dir} ({_size_mb(q_dir):.2f} MB): quantization_config method={qc['method']} "
          f"w_bits={qc['w_bits']} a_bits={qc['a_bits']} format_version={qc['format_version']}")

    again = AutoModel.from_pretrained(q_dir, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(q_dir, trust_remote_code=True)
    ids = tok("Question: 3 + 4 = ? Answer:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref, before, after = fp(input_ids=ids).logits, model(input_ids=ids).logits, again(input_ids=ids).logits
    packed = sum(isinstance(m, W4A4Linear) for m in again.modules())
    rel = ((before - ref).norm() / ref.norm()).item()
    agree = (before.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"[4/4] reloaded pre-quantized: {packed} packed linears; logits identical to before saving: "
          f"{torch.equal(before, after)}; vs float: relative error {rel:.3f}, argmax agreement {agree:.0%}; "
          f"kernel backend: {fair_calib_hf.ops.active_backend('cpu')}")


if __name__ == "__main__":
    main()
