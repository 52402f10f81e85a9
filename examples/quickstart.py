"""The main job: quantize a bundled diffusion LM to W4A4 with plain RTN and with FAIR-Calib, save and reload the
FAIR-Calib checkpoint, and score FP, RTN and FAIR-Calib side by side.

    python examples/quickstart.py                      # or, on a fresh clone: bash examples/run_quickstart.sh

Everything runs offline on the CPU. The model is ``zoo:dream-arith``, a small Dream-style masked-diffusion LM
trained by this project on multi-step arithmetic (card: ``fair_calib_hf/zoo/models/dream-arith/README.md``), where
round-to-nearest W4A4 visibly breaks the answers; it loads exactly as users load the real Dream checkpoints
(``AutoModel.from_pretrained(..., trust_remote_code=True)``). Calibration uses the task's calibration split; the
scores use held-out test problems. The calibration budget is reduced to keep the demo short (64 sequences, 64
probes, 10 epochs; the paper's and the CLI's defaults are larger).

How long: about 25 s on an idle 2-core CPU (BENCHMARKS.md, "Calibration cost"); several minutes when other jobs
share the cores. Progress is printed as steps [1/4] to [4/4].

What it prints: the model loaded [1/4]; the calibration summary [2/4]; where the checkpoint was saved [3/4]; then
a table of the FP model, W4A4 RTN and the reloaded W4A4 checkpoint. "accuracy" is the exact match of the final
answer on --count held-out test problems (higher is better; FP is the ceiling). "flip rate vs FP" replays the FP
model's own decoding on the first 32 of those problems and counts, at each step, the positions the FP model
commits where the W4A4 model's top-1 token differs (lower is closer to FP).
"""
import argparse
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT_ROOT = os.path.join(REPO, "out", "quickstart")  # /out/ is git-ignored


def default_out(model: str, method: str) -> str:
    """The checkpoint folder used without ``--out``: ``out/quickstart/<model>-<method>`` in the repository (ignored
    by git; replaced on every run)."""
    name = os.path.basename(os.path.normpath(model.removeprefix("zoo:"))) or "model"
    return os.path.join(DEFAULT_OUT_ROOT, f"{name}-{method}")


def build_parser() -> argparse.ArgumentParser:
    """The command line (parsed before torch is imported, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(prog="python examples/quickstart.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:dream-arith",
                        help="a zoo: model (e.g. zoo:dream-arith-fewshot, zoo:llada-arith; all of them: "
                             "fair_calib_hf.zoo.available()) or the folder of one; it must carry its zoo task, "
                             "which scores the answers (default: %(default)s)")
    parser.add_argument("--method", default="fair_calib", choices=["quarot", "flatquant", "fair_calib"],
                        help="the calibrated method compared with plain RTN (default: %(default)s)")
    parser.add_argument("--count", type=int, default=128,
                        help="held-out test problems to score each model on (default: %(default)s)")
    parser.add_argument("--out", default=None,
                        help="folder for the quantized checkpoint; an existing non-empty folder is refused unless "
                             "--overwrite (default: out/quickstart/<model>-<method> in this repository, git-ignored "
                             "and replaced on every run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing, non-empty --out folder (default: off)")
    return parser


def _size_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors")) / 1e6


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    out = os.path.abspath(args.out or default_out(args.model, args.method))
    overwrite = args.overwrite or args.out is None  # the default folder is this script's own scratch space
    if args.out and os.path.isdir(out) and os.listdir(out) and not overwrite:
        parser.error(f"--out {args.out!r} already exists and is not empty; pass --overwrite to replace it, or "
                     "choose another folder")

    from transformers import AutoModel, AutoTokenizer

    import fair_calib_hf  # registers the "fair_calib" quantization method with transformers
    from fair_calib_hf import FairCalibConfig, W4A4Linear
    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.checkpoint import atomic_directory, check_output_location
    from fair_calib_hf.diagnostics import compare_models
    from fair_calib_hf.zoo import resolve, task_of
    from fair_calib_hf.zoo.evaluate import calibration_geometry, default_decode_config, generate_answers

    check_output_location(out)
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

    with atomic_directory(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    with open(os.path.join(out, "config.json")) as handle:
        qc = json.load(handle)["quantization_config"]
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
