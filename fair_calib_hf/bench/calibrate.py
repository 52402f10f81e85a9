"""Calibration cost: wall time of Stage I and of the whole calibration, peak memory, and Stage II against its
arithmetic, per model and method.

Each (model, method) runs in a fresh subprocess so that its peak resident memory is its own: the reported
peak is ``ru_maxrss`` after calibration minus the resident size just before ``from_pretrained`` with the
quantization config (the float model is already loaded once in the subprocess to warm up imports).
Models (``--models``): ``tiny`` — the bundled tiny random reference architectures (``save_tiny``, LLaDA- and
Dream-style, 64–96 wide; 16 sequences of 128 tokens; all four methods), measuring the machinery's cost, not
quality — and ``zoo:NAME`` — a bundled zoo model calibrated exactly as ``fair-calib quantize zoo:NAME`` does by
default (128 sequences of the task's calibration split, seed 0, the task's geometry:
:func:`~fair_calib_hf.zoo.evaluate.calibration_geometry`; ``--methods``, default FlatQuant and FAIR-Calib).

**Stage II against its arithmetic** (FlatQuant and FAIR-Calib rows): ``Stage II s`` is the summed wall time of
the blocks' optimization loops; ``FLOP-bound s`` is the FLOP count of those steps (:func:`stage2_flops`) at
the fp32 GEMM rate measured in the same process (``torch.mm`` of two 1024 × 1024 matrices, best of 3, measured
before and after calibration; the higher rate is used, so the bound is the stricter one), and
``x FLOP-bound`` their ratio (1 = every FLOP at the GEMM rate).

**Stage II states** (``--states``, issue 27): each Stage II row runs once per states variant of :data:`STATES`
(``observed``, the default, ``masked``, ``trajectory`` and, for FAIR-Calib, ``trajectory-frontier``), one state per
calibration sequence, so every variant takes the same number of optimizer steps. ``states s`` is the time spent
producing the states (the teacher's decoding for trajectory states: what they add to Stage I), ``Stage II s/step``
the optimization loop's time per optimizer step and ``x observed`` its ratio to the same model and method on
observed states.

**What Stage II's own machinery costs** (``--stub``, a profiling aid): the named parts are replaced by cheap
stand-ins before calibrating (``fake-quant``: ``x · clip`` for the fake quantizer; ``transforms``: ``x`` times one
entry of each Kronecker factor; ``inversions``: the factors' transposes for their inverses), so ``Stage II s``
with them stubbed bounds what fusing them could save. The calibration it produces is meaningless.

**Compiled against pure-torch fake quantizer** (``--fake-quant-ab``): per model and method, in one process,
calibrations alternating between Stage II's compiled fake quantizer and its pure-torch definition
(:func:`fair_calib_hf.ops.fake_quant_cpu.set_enabled`), ``--repeats`` of each; prints the best Stage II time of
each and their ratio (> 1: the compiled one is faster). Alternating in one process keeps this machine's
run-to-run drift out of the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import torch

from .common import report, rss_mb

METHODS = ("rtn", "quarot", "flatquant", "fair_calib")
SETTINGS = dict(num_samples=16, seq_len=128, pack_samples=True, n_probe=32, prior_window=64, probe_steps=32)
STATES = {"observed": {}, "masked": {"calibration_states": "masked"},
          "trajectory": {"calibration_states": "trajectory"},
          "trajectory-frontier": {"calibration_states": "trajectory", "state_weights": "frontier"}}
"""``--states`` variants: ``FairCalibConfig`` overrides (``trajectory-frontier``: FAIR-Calib only)."""

STUBS = ("fake-quant", "transforms", "inversions")
"""``--stub`` choices (see the module docstring)."""


@contextlib.contextmanager
def stubbed(stubs):
    """Within the block, the named Stage II parts (:data:`STUBS`) are cheap stand-ins (restored on exit)."""
    from fair_calib_hf.calibration import stage2_fit

    def transposes(params):
        for sp in params:
            sp._inverse = (sp.left.t(), sp.right.t())

    stand_ins = {"fake-quant": ("fake_quant_rows", lambda x, clip, bits=4: x * clip),
                 "transforms": ("kron_apply_gemms", lambda x, left, right: x * left[0, 0] * right[0, 0]),
                 "inversions": ("invert_factors_together", transposes)}
    unknown = set(stubs) - set(stand_ins)
    if unknown:
        raise ValueError(f"stubbed: unknown parts {sorted(unknown)}; choose from {list(STUBS)}")
    saved = {name: getattr(stage2_fit, name) for name, _ in stand_ins.values()}
    try:
        for part in stubs:
            setattr(stage2_fit, *stand_ins[part])
        yield
    finally:
        for name, fn in saved.items():
            setattr(stage2_fit, name, fn)


def _texts() -> list[str]:
    """Calibration text that exists offline on every machine: torch's own module sources."""
    root = os.path.join(os.path.dirname(torch.__file__), "nn", "modules")
    return [open(os.path.join(root, f)).read() for f in sorted(os.listdir(root)) if f.endswith(".py")][:12]


def gemm_rate(n: int = 1024, repeats: int = 3) -> float:
    """fp32 FLOP/s of ``torch.mm`` on two ``n × n`` matrices (best of ``repeats`` after a warm-up)."""
    from .common import best_time

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats)


def stage2_flops(model, samples: int, seq_len: int, epochs: int, steps_per_block: int,
                 site_widths: list[list[int]] | None = None) -> float:
    """FLOPs of Stage II on the float ``model``, summed over its blocks: forward + backward (3 × the forward)
    of the block on ``samples × seq_len`` tokens per epoch — its linears (2 FLOP per weight per
    token), attention (``4·seq_len·d`` per token: scores and weighted sum) and the online Kronecker transform
    of each site's input (``2·in·(a + b)`` per token, ``a × b = in`` from
    :func:`~fair_calib_hf.calibration.transforms.kronecker_factors`; once per site, the linears reading the
    same input share it: ``site_widths[block]`` lists the sites' input widths, as ``fit_block`` reports them;
    without it, once per linear, an upper bound) — plus the weight transforms rebuilt once per step
    (``2·out·in·(a + b)`` per linear). Elementwise work (fake quantization, norms, activations), the
    ``a³ + b³`` inversions and the optimizer are not counted."""
    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.calibration.transforms import kronecker_factors

    def transform(width: int) -> int:
        a, b = kronecker_factors(width)
        return 2 * width * (a + b)

    total = 0.0
    d_model = model.get_input_embeddings().weight.shape[1]
    for index, block in enumerate(get_adapter(model).blocks(model)):
        linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        per_token = 4 * seq_len * d_model
        weight_side = 0.0
        for lin in linears:
            a, b = kronecker_factors(lin.in_features)
            per_token += 2 * lin.weight.numel()
            weight_side += 2 * lin.weight.numel() * (a + b)
        widths = site_widths[index] if site_widths is not None else [lin.in_features for lin in linears]
        per_token += sum(transform(w) for w in widths)
        total += 3 * (epochs * samples * seq_len * per_token + steps_per_block * weight_side)
    return total


def _zoo_config(name: str, method: str):
    """``(path, FairCalibConfig)`` as ``fair-calib quantize NAME --method METHOD`` builds it by default (the
    CLI's own :func:`~fair_calib_hf.cli.commands.build_config`, with the CLI's defaults: seed 0, no ``--dataset``)."""
    from fair_calib_hf import zoo
    from fair_calib_hf.cli.commands import build_config, load_tokenizer

    path = zoo.resolve(name)
    cfg, _ = build_config(argparse.Namespace(seed=0, dataset=None), path, True, method, load_tokenizer(path))
    return path, cfg


def run_one(model_name: str, method: str, states: str = "observed", stubs=()) -> dict:
    """One row: ``model_name`` is ``tiny-llada`` / ``tiny-dream`` or ``zoo:NAME``; ``states`` a key of
    :data:`STATES`; ``stubs``: parts of :data:`STUBS` replaced by stand-ins (profiling only)."""
    import resource

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.reference_models import save_tiny

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as root, stubbed(stubs):
        if model_name.startswith("zoo:"):
            path, cfg = _zoo_config(model_name, method)
        else:
            family = model_name.removeprefix("tiny-")
            path = save_tiny(family, os.path.join(root, family))
            cfg = FairCalibConfig(method=method, calibration_dataset=_texts(), **SETTINGS)
        for key, value in STATES[states].items():
            setattr(cfg, key, value)
        cfg.post_init()
        float_model = AutoModel.from_pretrained(path, trust_remote_code=True)
        rate_before = gemm_rate()
        before = rss_mb()
        model = AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=cfg)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = model.hf_quantizer.calibration_report
    row = {"model": model_name, "method": method, "states": states, "stubbed": list(stubs),
           "states_s": round(r.states.seconds, 2) if r.states is not None else 0.0,
           "samples": r.num_samples, "seq_len": cfg.seq_len,
           "threads": torch.get_num_threads(), "stage1_s": round(r.stage1_seconds, 2),
           "total_s": round(r.seconds, 2), "peak_mb_over_loaded": round(max(peak - before, 0.0), 1),
           "block_rel_mse": [round(b.rel_mse, 5) for b in r.blocks]}
    if all("fit_seconds" in b.extra for b in r.blocks) and r.blocks:
        steps = r.blocks[0].extra["steps"]
        widths = [b.extra["site_widths"] for b in r.blocks] if all("site_widths" in b.extra for b in r.blocks) \
            else None
        flops = stage2_flops(float_model, r.num_samples, cfg.seq_len, cfg.epochs, steps, widths)
        rate = max(rate_before, gemm_rate())
        fit = sum(b.extra["fit_seconds"] for b in r.blocks)
        row.update(stage2_s=round(fit, 2), steps_per_block=steps, stage2_s_per_step=round(fit / max(
                       steps * len(r.blocks), 1), 4), stage2_gflop=round(flops / 1e9, 2), gemm_gflops=round(rate / 1e9, 1),
                   flop_bound_s=round(flops / rate, 3), stage2_over_flop_bound=round(fit * rate / flops, 2),
                   final_epoch_loss=[round(b.extra["epoch_losses"][-1], 6) for b in r.blocks])
    return row


def fake_quant_ab(model_name: str, method: str, repeats: int) -> dict:
    """Stage II seconds with the compiled and with the pure-torch fake quantizer, alternating, best of
    ``repeats`` each (module docstring); ``model_name`` as :func:`run_one` takes it."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.ops import fake_quant_cpu
    from fair_calib_hf.reference_models import save_tiny

    if not fake_quant_cpu.available():
        raise SystemExit("--fake-quant-ab needs the compiled fake quantizer (the native extension, without "
                         "FAIR_CALIB_BACKEND=reference)")
    hf_logging.disable_progress_bar()
    times = {"compiled": [], "pure torch": []}
    with tempfile.TemporaryDirectory() as root:
        if model_name.startswith("zoo:"):
            path, cfg = _zoo_config(model_name, method)
        else:
            path = save_tiny(model_name.removeprefix("tiny-"), os.path.join(root, "model"))
            cfg = FairCalibConfig(method=method, calibration_dataset=_texts(), **SETTINGS)
        cfg.post_init()
        try:
            for _ in range(repeats):
                for variant in times:
                    fake_quant_cpu.set_enabled(variant == "compiled")
                    model = AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=cfg)
                    times[variant].append(sum(b.extra["fit_seconds"] for b in model.hf_quantizer.calibration_report.blocks))
                    del model
        finally:
            fake_quant_cpu.set_enabled(True)
    best = {k: min(v) for k, v in times.items()}
    return {"model": model_name, "method": method, "threads": torch.get_num_threads(),
            "compiled_s": [round(t, 2) for t in times["compiled"]], "pure_torch_s": [round(t, 2) for t in times["pure torch"]],
            "speedup": round(best["pure torch"] / best["compiled"], 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny"],
                        help="'tiny' (the tiny reference LLaDA and Dream models, all methods) and/or zoo:NAME "
                             "(a zoo model with the CLI's defaults); default: tiny")
    parser.add_argument("--methods", nargs="+", default=["flatquant", "fair_calib"], choices=METHODS,
                        help="methods for the zoo models (default: the two with Stage II)")
    parser.add_argument("--states", nargs="+", default=["observed"], choices=list(STATES),
                        help="Stage II states variants timed for flatquant / fair_calib (default: observed); "
                             "trajectory-frontier runs for fair_calib only")
    parser.add_argument("--stub", nargs="+", default=[], choices=STUBS,
                        help="profiling aid: replace these Stage II parts by cheap stand-ins to measure what they "
                             "cost (the calibration is meaningless)")
    parser.add_argument("--fake-quant-ab", action="store_true",
                        help="time Stage II with the compiled and the pure-torch fake quantizer, alternating in one "
                             "process per model and method (--repeats each), and print the ratio")
    parser.add_argument("--repeats", type=int, default=2, help="calibrations per variant with --fake-quant-ab")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs="+", metavar="MODEL METHOD [STATES]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        if args.fake_quant_ab:
            print(json.dumps(fake_quant_ab(args.one[0], args.one[1], args.repeats)))
        else:
            print(json.dumps(run_one(*args.one, stubs=args.stub)))
        return
    if args.fake_quant_ab:
        names = [f"tiny-{f}" for f in ("llada", "dream")] if args.models == ["tiny"] else []
        names += [m for m in args.models if m.startswith("zoo:")]
        rows = []
        for name in names:
            for method in [m for m in args.methods if m in ("flatquant", "fair_calib")]:
                out = subprocess.run([sys.executable, "-m", "fair_calib_hf.bench", "calibrate", "--one", name, method,
                                      "--fake-quant-ab", "--repeats", str(args.repeats)], capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"bench calibrate --fake-quant-ab {name} {method} failed:\n{out.stderr[-4000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        report(f"Stage II with the compiled vs the pure-torch fake quantizer, alternating in one process, best of "
               f"{args.repeats} each; torch {torch.__version__}, {torch.get_num_threads()} threads",
               {"model": lambda r: r["model"], "method": lambda r: r["method"],
                "compiled Stage II s (runs)": lambda r: ", ".join(map(str, r["compiled_s"])),
                "pure-torch Stage II s (runs)": lambda r: ", ".join(map(str, r["pure_torch_s"])),
                "pure torch / compiled": lambda r: r["speedup"]}, rows, args.json)
        return

    def variants(method):
        if method not in ("flatquant", "fair_calib"):
            return ["observed"]
        return [v for v in args.states if method == "fair_calib" or not STATES[v].get("state_weights")]
    jobs = []
    for name in args.models:
        if name == "tiny":
            jobs += [(f"tiny-{family}", method, v) for family in ("llada", "dream") for method in METHODS
                     for v in variants(method)]
        elif name.startswith("zoo:"):
            jobs += [(name, method, v) for method in args.methods for v in variants(method)]
        else:
            parser.error(f"--models: {name!r} is neither 'tiny' nor zoo:NAME")
    rows = []
    for model_name, method, states in jobs:
        out = subprocess.run([sys.executable, "-m", "fair_calib_hf.bench", "calibrate", "--one", model_name, method,
                              states] + (["--stub", *args.stub] if args.stub else []), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"bench calibrate {model_name} {method} {states} failed:\n{out.stderr[-4000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    observed = {(r["model"], r["method"]): r.get("stage2_s_per_step") for r in rows if r["states"] == "observed"}
    for r in rows:
        base = observed.get((r["model"], r["method"]))
        if base and r.get("stage2_s_per_step"):
            r["stage2_step_over_observed"] = round(r["stage2_s_per_step"] / base, 2)
    report(f"calibration cost; tiny models: settings {SETTINGS}, other options at their defaults (Stage II: 15 "
           f"epochs, batch 4); zoo models: the CLI's defaults; torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads",
           {"model": lambda r: r["model"], "method": lambda r: r["method"], "states": lambda r: r["states"],
            "stubbed": lambda r: ", ".join(r.get("stubbed", [])) or "-",
            "samples": lambda r: r["samples"],
            "seq_len": lambda r: r["seq_len"], "Stage I s": lambda r: r["stage1_s"], "total s": lambda r: r["total_s"],
            "peak MB over loaded model": lambda r: r["peak_mb_over_loaded"],
            "states s": lambda r: r["states_s"], "Stage II s": lambda r: r.get("stage2_s", "-"),
            "Stage II s/step": lambda r: r.get("stage2_s_per_step", "-"),
            "x observed": lambda r: r.get("stage2_step_over_observed", "-"), "FLOP-bound s": lambda r: r.get("flop_bound_s", "-"),
            "GEMM GFLOP/s": lambda r: r.get("gemm_gflops", "-"),
            "x FLOP-bound": lambda r: r.get("stage2_over_flop_bound", "-"),
            "block rel. MSE": lambda r: ", ".join(map(str, r["block_rel_mse"]))}, rows, args.json)
