"""The main job: quantize a bundled diffusion LM to W4A4 with plain RTN and with FAIR-Calib, save and reload the
FAIR-Calib checkpoint, and score FP, RTN and FAIR-Calib side by side.

    python examples/quickstart.py [--model zoo:dream-arith] [--method fair_calib] [--count 128] [--out DIR]

Everything runs offline on the CPU (see BENCHMARKS.md for the time measured on an idle 2-core machine). The
model is ``zoo:dream-arith``, a small Dream-style masked-diffusion LM trained by this project on multi-step
arithmetic (see its card in ``fair_calib_hf/zoo/models/dream-arith/README.md``), where round-to-nearest W4A4
visibly breaks the answers; it loads exactly as users load the real Dream checkpoints
(``AutoModel.from_pretrained(..., trust_remote_code=True)``). Calibration uses the task's calibration split;
the scores use held-out test problems. The calibration budget is reduced to keep the demo short (64 sequences,
64 probes, 10 epochs; the paper's and the CLI's defaults are larger).
"""
import argparse
import json
import os
import tempfile

from transformers import AutoModel, AutoTokenizer

import fair_calib_hf  # registers the "fair_calib" quantization method with transformers
from fair_calib_hf import FairCalibConfig, W4A4Linear
from fair_calib_hf.architectures import get_adapter
from fair_calib_hf.diagnostics import compare_models
from fair_calib_hf.zoo import resolve, task_of
from fair_calib_hf.zoo.evaluate import calibration_geometry, default_decode_config, generate_answers


def _size_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:dream-arith", help="a zoo: name or a checkpoint folder")
    parser.add_argument("--method", default="fair_calib", choices=["quarot", "flatquant", "fair_calib"],
                        help="the calibrated method compared with plain RTN")
    parser.add_argument("--count", type=int, default=128, help="test problems to score")
    parser.add_argument("--out", default=None, help="where to write the quantized checkpoint (default: a temp dir)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    args = parser.parse_args()
    if args.out and os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        parser.error(f"--out {args.out!r} already exists and is not empty; pass --overwrite to replace it, or "
                     "choose another folder")
    path = resolve(args.model)
    task = task_of(path)
    if task is None:
        raise SystemExit(f"{args.model}: not a zoo model (no training.json); the demo needs a zoo task to score")

    fp = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    print(f"[1/4] loaded {args.model}: {sum(p.numel() for p in fp.parameters()):,} parameters, "
          f"{_size_mb(path):.2f} MB of fp32 safetensors, task {task.name!r}")

    family = get_adapter(fp).family
    geometry = calibration_geometry(task, family)
    cfg = FairCalibConfig(method=args.method, calibration_dataset=task.calibration_sequences(tok, 64, seed=0),
                          num_samples=64, n_probe=64, probe_batch_size=16, epochs=10, **geometry)
    model = AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=cfg).eval()
    rtn = AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=FairCalibConfig(
        method="rtn", seq_len=geometry["seq_len"])).eval()
    print(f"[2/4] calibrated on load (and plain RTN for comparison): "
          f"{model.hf_quantizer.calibration_report.summary()}")

    out = args.out or os.path.join(tempfile.mkdtemp(prefix="fair_calib_quickstart_"), "w4a4")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    print(f"[3/4] saved to {out} ({_size_mb(out):.2f} MB): method={qc['method']} w_bits={qc['w_bits']} "
          f"a_bits={qc['a_bits']} format_version={qc['format_version']}")

    again = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    packed = sum(isinstance(m, W4A4Linear) for m in again.modules())
    examples = task.examples("test", args.count, seed=0)
    prompts, _ = task.encode(examples, tok)
    decode = default_decode_config(task, family, record=False)
    print(f"[4/4] reloaded ({packed} packed W4A4 linears, kernel backend {fair_calib_hf.ops.active_backend('cpu')}); "
          f"{args.count} test problems, decoding {decode.policy} gen {decode.gen_length} steps {decode.steps} "
          f"block {decode.block_length}:")
    print(f"      {'model':<30} {'accuracy':>9} {'flip rate vs FP':>16}")
    for name, m in (("FP", fp), ("W4A4 RTN", rtn), (f"W4A4 {args.method} (reloaded)", again)):
        texts, _ = generate_answers(m, tok, task, examples, decode)
        flips = "" if m is fp else (
            # only the flip rate is printed: skip the re-masked post-commit reading (one extra forward per position)
            f"{100 * compare_models(fp, m, prompts[:32], config=default_decode_config(task, family), remask=False).flip_rate:.2f} %")
        print(f"      {name:<30} {100 * task.accuracy(texts, examples):>7.1f} % {flips:>16}")
    print("      (accuracy: exact match of the final answer; flip rate: replaying the FP model's decoding on 32 "
          "prompts, the share of the positions it commits at each step where the W4A4 model's top-1 token differs)")


if __name__ == "__main__":
    main()
