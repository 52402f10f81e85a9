"""CPU W4A4 speed against torch, measured in one process: single layers, whole denoising steps, checkpoint size.

**Layers.** For each weight shape ``N × K`` and token count ``M``, with random inputs (never zeros):

* ``fp32``: torch ``F.linear(x, W)``;
* ``int8``: torch's own dynamically quantized linear (``torch.ao.quantization.quantize_dynamic``, int8 weights
  and per-batch int8 activations, fbgemm/x86);
* ``W4A4 GEMM``: the packed GEMM alone (packed int4 activations × packed int4 weights, fp32 epilogue);
* ``W4A4 layer``: the whole :class:`~fair_calib_hf.modules.W4A4Linear` forward as Stage II leaves it: online
  Kronecker transform with the diagonal, per-token int4 quantization and packing, GEMM;
* ``transform share``: the layer's activation side alone (transform + quantization + packing, the
  ``quantize_act_int4`` op) over the whole layer's time;
* ``W4A4 prepared``: the same layer after :meth:`~fair_calib_hf.modules.W4A4Linear.prepare_cpu_layout` (the
  weights held in the VNNI GEMM's prepared layout instead of regrouped per call); only with the AVX-512 VNNI
  kernels, ``-`` otherwise.

**Weight-only layers** (``--weight-only`` times only these): fp32 ``F.linear`` and bf16 ``F.linear`` against
:class:`~fair_calib_hf.modules.WeightOnlyLinear` as loading leaves it (W4A16 with group size 128 and per-channel
scales: torch's CPU int4 kernel up to ``INT4PACK_MAX_TOKENS`` tokens, dequantize + fp32 GEMM above; W8A16: the
reference, dequantize + fp32 GEMM), fp32 inputs, and the bytes each stores against bf16 weights.

**8-bit activations** (``--act8`` times only these, at M 1 16 64 256 1024 on :data:`ACT8_SHAPES` unless
``--m`` / ``--shapes`` are given): fp32 and bf16 ``F.linear`` and torch's int8 dynamic linear (as above) against
the whole :class:`~fair_calib_hf.modules.W8A8Linear` forward (the compiled int8 quantizer, ``torch._int_mm`` and
the C++ epilogue, or this package's VNNI kernel up to ``int8_cpu.OWN_KERNEL_MAX_M`` tokens) and :class:`~fair_calib_hf.modules.W4A8Linear` forward (int8 quantizer, the int4-weight GEMM with
int8 activations): packed, prepared (what loading gives on VNNI CPUs; the ratios use it where available), and
prepared with a Stage II-shaped Kronecker transform and diagonal (``W4A8 +transform``). No transform in the other
columns: torch's int8 linear has none. fp32 inputs and outputs.

**Denoising step.** One forward of a whole model over ``batch × (prompt + answer)`` tokens with the answer
masked (what each diffusion step runs), float32 against the same model calibrated with FAIR-Calib (packed
W4A4 linears with their online transforms; embeddings, norms, attention and head stay float), in the packed
layout (``W4A4``, after :func:`~fair_calib_hf.modules.unprepare_cpu_layout`) and, with the AVX-512 VNNI kernels,
in the prepared layout that loading gives by default (``W4A4 prepared``). Models: the zoo
models at their task's sequence length, and ``wide-llada`` (the LLaDA-style architecture at LLaMA-8B width:
hidden 4096, MLP 12288, 2 blocks, random weights, 256 tokens), where the linears dominate as in the real model
(its W4A4 copy has random transforms of Stage II's shapes instead of fitted ones, with the diagonal applied
online at every linear, where Stage II folds most of them into norms: an upper bound on the W4A4 time).

**Checkpoint size.** The safetensors bytes of the packed FAIR-Calib checkpoint against fp32 and bf16 saves of
the same model (``wide-llada``: the state dicts' tensor bytes, its W4A4 copy being built without Stage II, see
:func:`_wide_llada_pair`).

Every time is the best of ``--repeats`` after a warm-up, with the same torch thread count for every variant;
ratios > 1 mean W4A4 is faster (or smaller). ``--isa`` times several GEMM instruction sets (e.g. ``avx512vnni
avx2``) in the same process, one row each. ``--quick`` runs one shape, two token counts and one small model.

**The peers' instruction set.** fp32 and int8 run on whatever torch picks for this CPU (AVX-512 where present),
so forcing ``--isa avx2`` on an AVX-512 machine compares an AVX2 W4A4 against AVX-512 peers. To time an
AVX2-only machine, cap the peers too, in the environment of the whole process (read once at start-up)::

    FBGEMM_ENABLE_INSTRUCTIONS=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \
        python -m fair_calib_hf.bench kernels --isa avx2

(fbgemm, which runs torch's int8 dynamic linear, MKL and ATen's own kernels each honour their variable); the
table's title names what the peers ran on.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings

import torch
import torch.nn.functional as F

from .common import best_time, report

SHAPES = {  # name: (N, K)
    "4096x4096": (4096, 4096),
    "14336x4096": (14336, 4096),
    "4096x14336": (4096, 14336),
    "dream 18944x3584": (18944, 3584),
    "llada 4096x12288": (4096, 12288),
    "llada 12288x4096": (12288, 4096),
    "dream 3584x18944": (3584, 18944),
}
DEFAULT_SHAPES = ("4096x4096", "14336x4096", "4096x14336", "dream 18944x3584", "llada 4096x12288")
"""The W4A4 and weight-only tables' shapes (``--shapes`` picks others)."""
ACT8_SHAPES = ("4096x4096", "llada 4096x12288", "llada 12288x4096", "dream 18944x3584", "dream 3584x18944")
"""The ``--act8`` table's shapes: 4096² and the LLaDA-8B / Dream-7B MLP shapes both ways."""
ACT8_M = (1, 16, 64, 256, 1024)
WIDE_LLADA = dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=2, mlp_hidden_size=12288)
"""``wide-llada``: the LLaDA-style architecture at LLaMA-8B width, 2 blocks (random weights)."""
WIDE_TOKENS = 256
STEP_CALIBRATION = dict(num_samples=4, epochs=1, n_probe=4, probe_batch_size=4, batch_size=2)
"""FAIR-Calib settings for the speed models: the packed structure (and so the speed) does not depend on how
long Stage II runs."""


def shape_weight(name: str):
    """The layer tables' weight for shape ``name``: ``(n, k, generator, w)`` with ``w = randn(n, k) / sqrt(k)``
    drawn from a generator seeded 0, which the caller keeps drawing from (transforms, inputs)."""
    n, k = SHAPES[name]
    g = torch.Generator().manual_seed(0)
    return n, k, g, torch.randn(n, k, generator=g) / k ** 0.5


def linear_of(weight: torch.Tensor) -> torch.nn.Linear:
    """A bias-free ``nn.Linear`` holding ``weight`` ([N, K])."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


def int8_dynamic_linear(weight: torch.Tensor) -> torch.nn.Module:
    """torch's dynamically quantized int8 linear holding ``weight`` ([N, K])."""
    from torch.ao.quantization import quantize_dynamic

    linear = linear_of(weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 marks the quantized tensor types deprecated
        return quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)[0]


def transformed_w4a4_linear(weight: torch.Tensor, generator: torch.Generator):
    """A :class:`W4A4Linear` of ``weight`` with a random orthogonal Kronecker transform and a diagonal near 1,
    shaped as Stage II builds it (the speed does not depend on the values)."""
    from fair_calib_hf.modules import W4A4Linear

    return transformed_linear(weight, generator, W4A4Linear)


def transformed_linear(weight: torch.Tensor, generator: torch.Generator, cls):
    """A packed linear of class ``cls`` (:class:`~fair_calib_hf.modules.ActQuantLinear`) of ``weight`` with a random
    orthogonal Kronecker transform and a diagonal near 1, as :func:`transformed_w4a4_linear` builds it."""
    from fair_calib_hf.calibration.transforms import kronecker_factors, random_orthogonal, transform_weight

    k = weight.shape[1]
    a, b = kronecker_factors(k)
    left, right = random_orthogonal(a, generator).float(), random_orthogonal(b, generator).float()
    diag = 0.9 + 0.2 * torch.rand(k, generator=generator)
    linear = torch.nn.Linear(k, weight.shape[0], bias=False)
    return cls.from_linear(linear, weight=transform_weight(weight, left, right, diag), transform=(left, right, diag))


PEER_ISA_VARIABLES = ("FBGEMM_ENABLE_INSTRUCTIONS", "MKL_ENABLE_INSTRUCTIONS")


def peers_isa() -> str:
    """What the fp32 / int8 peers run on: ATen's CPU capability and any ISA cap set for fbgemm or MKL (see the
    module docstring), e.g. ``"ATen AVX512"`` or ``"ATen AVX2, FBGEMM_ENABLE_INSTRUCTIONS=AVX2, ..."``."""
    caps = [f"{name}={os.environ[name]}" for name in PEER_ISA_VARIABLES if os.environ.get(name)]
    return ", ".join([f"ATen {torch.backends.cpu.get_cpu_capability()}"] + caps)


def layer_rows(shapes, ms, repeats, isas=(None,)) -> list[dict]:
    from fair_calib_hf import ops
    from fair_calib_hf.ops import cpu
    from fair_calib_hf.packing import quantize_weight_per_channel

    rows = []
    for name in shapes:
        n, k, g, w = shape_weight(name)
        wp, ws = quantize_weight_per_channel(w)
        int8 = int8_dynamic_linear(w)
        layer = transformed_w4a4_linear(w, g)
        prepared = copy.deepcopy(layer)
        if not prepared.prepare_cpu_layout():
            prepared = None
        tr = layer.input_transform
        for m in ms:
            x = torch.randn(m, k, generator=g)
            xp, sx = ops.quantize_act_int4(x, None, None, None, None)
            with torch.no_grad():
                t_fp = best_time(lambda: F.linear(x, w), repeats)
                t_int8 = best_time(lambda: int8(x), repeats)
                for isa in isas:
                    previous = cpu.set_isa(isa) if isa else None
                    try:
                        t_gemm = best_time(lambda: ops.w4a4_gemm(xp, sx, wp, ws, None, k, torch.float32), repeats)
                        t_layer = best_time(lambda: layer(x), repeats)
                        t_quant = best_time(lambda: ops.quantize_act_int4(x, tr.left, tr.right, tr.diag,
                                                                          layer.input_clip), repeats)
                        t_prep = (best_time(lambda: prepared(x), repeats)
                                  if prepared is not None and ops.active_backend("cpu") == "avx512vnni" else None)
                        rows.append({"shape": name, "M": m, "isa": ops.active_backend("cpu"),
                                     "fp32_ms": round(t_fp * 1e3, 3), "int8_ms": round(t_int8 * 1e3, 3),
                                     "w4a4_gemm_ms": round(t_gemm * 1e3, 3), "w4a4_layer_ms": round(t_layer * 1e3, 3),
                                     "w4a4_quant_ms": round(t_quant * 1e3, 3),
                                     "transform_share": round(min(1.0, t_quant / t_layer), 3),
                                     "fp32_over_w4a4": round(t_fp / t_layer, 2),
                                     "int8_over_w4a4": round(t_int8 / t_layer, 2),
                                     "w4a4_prepared_ms": None if t_prep is None else round(t_prep * 1e3, 3),
                                     "int8_over_prepared": None if t_prep is None else round(t_int8 / t_prep, 2)})
                    finally:
                        if previous is not None:
                            cpu.set_isa(previous)
    return rows


def act8_rows(shapes, ms, repeats) -> list[dict]:
    """Per shape and token count: fp32 / bf16 ``F.linear`` and torch's int8 dynamic linear vs the W8A8 and W4A8
    layers (module docstring, ``--act8``)."""
    from fair_calib_hf import ops
    from fair_calib_hf.modules import W4A8Linear, W8A8Linear

    rows = []
    for name in shapes:
        n, k, g, w = shape_weight(name)
        w_bf16 = w.bfloat16()
        linear = linear_of(w)
        int8 = int8_dynamic_linear(w)
        w8a8 = W8A8Linear.from_linear(linear)
        w4a8 = W4A8Linear.from_linear(linear)  # packed layout
        w4a8_prepared = copy.deepcopy(w4a8)
        if not w4a8_prepared.prepare_cpu_layout():
            w4a8_prepared = None
        w4a8_tr = transformed_linear(w, g, W4A8Linear)
        w4a8_tr.prepare_cpu_layout()
        del linear
        for m in ms:
            x = torch.randn(m, k, generator=g)
            with torch.no_grad():
                t = {"fp32": best_time(lambda: F.linear(x, w), repeats),
                     "bf16": best_time(lambda: F.linear(x.bfloat16(), w_bf16), repeats),
                     "int8": best_time(lambda: int8(x), repeats),
                     "w8a8": best_time(lambda: w8a8(x), repeats),
                     "w4a8": best_time(lambda: w4a8(x), repeats),
                     "w4a8_prepared": (best_time(lambda: w4a8_prepared(x), repeats)
                                       if w4a8_prepared is not None else None),
                     "w4a8_transform": best_time(lambda: w4a8_tr(x), repeats)}
            w4a8_best = t["w4a8_prepared"] or t["w4a8"]  # what loading gives (prepared where available)
            row = {"shape": name, "M": m, "isa": ops.active_backend("cpu")}
            row.update({f"{key}_ms": None if v is None else round(v * 1e3, 3) for key, v in t.items()})
            row.update({"int8_over_w8a8": round(t["int8"] / t["w8a8"], 2),
                        "int8_over_w4a8": round(t["int8"] / w4a8_best, 2),
                        "fp32_over_w8a8": round(t["fp32"] / t["w8a8"], 2),
                        "fp32_over_w4a8": round(t["fp32"] / w4a8_best, 2),
                        "bf16_over_w8a8": round(t["bf16"] / t["w8a8"], 2),
                        "bf16_over_w4a8": round(t["bf16"] / w4a8_best, 2)})
            rows.append(row)
    return rows


WEIGHT_ONLY_M = (1, 4, 16, 32, 64, 256)


def weight_only_rows(shapes, ms, repeats) -> list[dict]:
    """Per shape and token count: fp32 / bf16 ``F.linear`` vs the weight-only layers (module docstring)."""
    from fair_calib_hf.modules import WeightOnlyLinear

    rows = []
    for name in shapes:
        n, k, g, w = shape_weight(name)
        w_bf16 = w.bfloat16()
        linear = linear_of(w)
        layers = {"w4a16_g128": WeightOnlyLinear.from_linear(linear, 4, 128),
                  "w4a16_channel": WeightOnlyLinear.from_linear(linear, 4, None),
                  "w8a16": WeightOnlyLinear.from_linear(linear, 8, None)}
        prepared = {key: layer.prepare_cpu_layout() for key, layer in layers.items()}
        stored = {key: sum(t.numel() * t.element_size() for t in layer.state_dict().values())
                  for key, layer in layers.items()}
        del linear
        for m in ms:
            x = torch.randn(m, k, generator=g)
            with torch.no_grad():
                t_fp = best_time(lambda: F.linear(x, w), repeats)
                t_bf = best_time(lambda: F.linear(x.bfloat16(), w_bf16), repeats)
                times = {key: best_time(lambda layer=layer: layer(x), repeats) for key, layer in layers.items()}
            row = {"shape": name, "M": m, "fp32_ms": round(t_fp * 1e3, 3), "bf16_ms": round(t_bf * 1e3, 3)}
            for key, t in times.items():
                row[f"{key}_ms"] = round(t * 1e3, 3)
                row[f"fp32_over_{key}"] = round(t_fp / t, 2)
                row[f"{key}_bytes_over_bf16"] = round(stored[key] / (2 * n * k), 3)
                row[f"{key}_torch_int4_kernel"] = prepared[key]
            rows.append(row)
    return rows


def _safetensors_bytes(model, folder: str, dtype=None) -> int:
    from ..saving import tolerant_generation_config

    if dtype is not None:
        model = model.to(dtype)
    with tolerant_generation_config(model):  # Dream's remote generation config (see saving.py)
        model.save_pretrained(folder, safe_serialization=True)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def _tensor_bytes(model, dtype=None) -> int:
    """Bytes of the state dict's tensors (a safetensors file less its small JSON header), float tensors counted
    in ``dtype`` when given."""
    total = 0
    for t in model.state_dict().values():
        floating = dtype is not None and t.is_floating_point()
        total += t.numel() * (torch.empty((), dtype=dtype).element_size() if floating else t.element_size())
    return total


def _wide_llada_pair(root: str):
    """``wide-llada`` in float32 and a copy whose block linears are :func:`transformed_w4a4_linear` modules
    (the module structure and transform shapes Stage II produces; running Stage II on 0.4 B parameters does not
    fit this benchmark's budget, and the speed does not depend on the fitted values)."""
    import copy

    from transformers import AutoModel

    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.reference_models import save_tiny
    from fair_calib_hf.targets import block_targets, set_submodule

    path = save_tiny("llada", os.path.join(root, "wide-llada"), seed=0, **WIDE_LLADA)
    fp = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    q = copy.deepcopy(fp)
    g = torch.Generator().manual_seed(0)
    adapter = get_adapter(q)
    for index, block in enumerate(adapter.blocks(q)):
        for name, linear in block_targets(block, f"{adapter.blocks_path}.{index}", None):
            set_submodule(q, name, transformed_w4a4_linear(linear.weight.detach(), g))
    return fp, q


def model_rows(models, batches, repeats) -> list[dict]:
    """Denoising-step time and checkpoint sizes, float32 vs FAIR-Calib W4A4, for each model name."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.modules import prepare_cpu_layout, unprepare_cpu_layout
    from fair_calib_hf.zoo import resolve, task_of

    hf_logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in models:
            if name == "wide-llada":
                fp, q = _wide_llada_pair(root)
                seq_len, prompt_len = WIDE_TOKENS, WIDE_TOKENS // 2
                sizes = {"fp32": _tensor_bytes(fp), "bf16": _tensor_bytes(fp, torch.bfloat16), "w4a4": _tensor_bytes(q)}
            else:  # a zoo name runs at its task's widths; any other checkpoint at 64 + 64 tokens
                path = resolve(name)
                task = task_of(path)
                seq_len, prompt_len = (task.prompt_width + task.gen_length, task.prompt_width) if task else (128, 64)
                fp = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
                vocab = fp.get_input_embeddings().weight.shape[0]
                data = torch.randint(5, min(vocab, 90), (STEP_CALIBRATION["num_samples"], seq_len),
                                     generator=torch.Generator().manual_seed(0)).tolist()
                cfg = FairCalibConfig(method="fair_calib", calibration_dataset=data, seq_len=seq_len,
                                      prior_window=seq_len - prompt_len, probe_steps=4, **STEP_CALIBRATION)
                q = AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=cfg).eval()
                sizes = {"fp32": _safetensors_bytes(fp, os.path.join(root, name + "-fp32")),
                         "w4a4": _safetensors_bytes(q, os.path.join(root, name + "-w4a4")),
                         "bf16": _safetensors_bytes(AutoModel.from_pretrained(path, trust_remote_code=True),
                                                    os.path.join(root, name + "-bf16"), torch.bfloat16)}
            unprepare_cpu_layout(q)  # the "W4A4" columns time the packed layout (loading prepares by default)
            qp = copy.deepcopy(q)
            if not prepare_cpu_layout(qp):
                qp = None
            mask_id = get_adapter(fp).mask_token_id(fp.config)
            vocab = fp.get_input_embeddings().weight.shape[0]
            g = torch.Generator().manual_seed(1)
            for batch in batches:
                ids = torch.randint(5, min(vocab, 90), (batch, seq_len), generator=g)
                ids[:, prompt_len:] = mask_id
                with torch.no_grad():
                    t_fp = best_time(lambda: fp(input_ids=ids), repeats)
                    t_q = best_time(lambda: q(input_ids=ids), repeats)
                    t_qp = best_time(lambda: qp(input_ids=ids), repeats) if qp is not None else None
                rows.append({"model": name, "batch": batch, "tokens": batch * seq_len,
                             "fp32_step_ms": round(t_fp * 1e3, 2), "w4a4_step_ms": round(t_q * 1e3, 2),
                             "step_ratio": round(t_fp / t_q, 2),
                             "w4a4_prepared_step_ms": None if t_qp is None else round(t_qp * 1e3, 2),
                             "prepared_step_ratio": None if t_qp is None else round(t_fp / t_qp, 2),
                             "fp32_mb": round(sizes["fp32"] / 2**20, 2),
                             "bf16_mb": round(sizes["bf16"] / 2**20, 2), "w4a4_mb": round(sizes["w4a4"] / 2**20, 2),
                             "size_ratio_fp32": round(sizes["fp32"] / sizes["w4a4"], 2),
                             "size_ratio_bf16": round(sizes["bf16"] / sizes["w4a4"], 2)})
            del fp, q, qp
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, M 16 and 64, one small model (smoke run)")
    parser.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES))
    parser.add_argument("--m", type=int, nargs="+", default=None, help="token counts (default 16 64 256 1024)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 5; 2 with --quick)")
    parser.add_argument("--isa", nargs="+", default=None,
                        help="GEMM instruction sets to time (default: the active one), e.g. avx512vnni avx2")
    parser.add_argument("--models", nargs="*", default=None,
                        help="models for the denoising step: zoo names, checkpoint folders and/or wide-llada "
                             "(default: zoo:llada-arith zoo:dream-arith wide-llada; `--models none` or `--models` "
                             "alone skips the denoising step)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="denoising-step batch sizes (default 1 16)")
    parser.add_argument("--weight-only", action="store_true",
                        help="time only the weight-only layers (W4A16 g128 / per-channel, W8A16), at M 1 4 16 32 64 256 "
                             "unless --m is given")
    parser.add_argument("--act8", action="store_true",
                        help="time only the 8-bit-activation layers (W8A8, W4A8) against fp32 / bf16 F.linear and "
                             "torch's int8 dynamic linear, at M 1 16 64 256 1024 on the LLaDA-8B / Dream-7B shapes "
                             "unless --m / --shapes are given")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from fair_calib_hf import ops

    if args.act8:
        repeats = args.repeats or (2 if args.quick else 5)
        act8 = act8_rows(args.shapes or (["4096x4096"] if args.quick else list(ACT8_SHAPES)),
                         args.m or ([16, 64] if args.quick else list(ACT8_M)), repeats)
        report(f"CPU 8-bit-activation layers (fp32 inputs): fp32 / bf16 F.linear and torch's int8 dynamic linear vs "
               f"W8A8 and W4A8 (whole forward); backend {ops.active_backend('cpu')}; peers: {peers_isa()}; torch "
               f"{torch.__version__}, {torch.get_num_threads()} threads, best of {repeats}",
               {"N×K": lambda r: r["shape"], "M": lambda r: r["M"], "fp32 ms": lambda r: r["fp32_ms"],
                "bf16 ms": lambda r: r["bf16_ms"], "int8 dyn. ms": lambda r: r["int8_ms"],
                "W8A8 ms": lambda r: r["w8a8_ms"], "W4A8 ms": lambda r: r["w4a8_ms"],
                "W4A8 prepared ms": lambda r: "-" if r["w4a8_prepared_ms"] is None else r["w4a8_prepared_ms"],
                "W4A8 +transform ms": lambda r: r["w4a8_transform_ms"],
                "int8/W8A8": lambda r: r["int8_over_w8a8"], "int8/W4A8": lambda r: r["int8_over_w4a8"],
                "fp32/W8A8": lambda r: r["fp32_over_w8a8"], "fp32/W4A8": lambda r: r["fp32_over_w4a8"],
                "bf16/W8A8": lambda r: r["bf16_over_w8a8"], "bf16/W4A8": lambda r: r["bf16_over_w4a8"]}, act8)
        if args.json:
            import json

            with open(args.json, "w") as f:
                json.dump({"backend": ops.active_backend("cpu"), "peers": peers_isa(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "act8": act8}, f, indent=2)
        return
    shapes = args.shapes or (["4096x4096"] if args.quick else list(DEFAULT_SHAPES))
    ms = args.m or ([16, 64] if args.quick else [16, 64, 256, 1024])
    repeats = args.repeats or (2 if args.quick else 5)
    if args.models is not None and [m.lower() for m in args.models] == ["none"]:
        args.models = []
    models = args.models if args.models is not None else (
        ["zoo:llada-arith"] if args.quick else ["zoo:llada-arith", "zoo:dream-arith", "wide-llada"])
    batches = args.batches or ([1] if args.quick else [1, 16])
    threads = torch.get_num_threads()

    weight_only = weight_only_rows(shapes, args.m or ([1, 16] if args.quick else list(WEIGHT_ONLY_M)), repeats)
    report(f"CPU weight-only linear layers (fp32 inputs): fp32 / bf16 F.linear vs W4A16 (torch int4 kernel) and W8A16; "
           f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {repeats}",
           {"N×K": lambda r: r["shape"], "M": lambda r: r["M"], "fp32 ms": lambda r: r["fp32_ms"],
            "bf16 ms": lambda r: r["bf16_ms"], "W4A16 g128 ms": lambda r: r["w4a16_g128_ms"],
            "fp32/W4A16 g128": lambda r: r["fp32_over_w4a16_g128"],
            "W4A16 per-ch. ms": lambda r: r["w4a16_channel_ms"],
            "fp32/W4A16 per-ch.": lambda r: r["fp32_over_w4a16_channel"],
            "W8A16 ms": lambda r: r["w8a16_ms"], "fp32/W8A16": lambda r: r["fp32_over_w8a16"],
            "bytes/bf16 g128": lambda r: r["w4a16_g128_bytes_over_bf16"],
            "bytes/bf16 W8A16": lambda r: r["w8a16_bytes_over_bf16"]}, weight_only)
    if args.weight_only:
        if args.json:
            import json

            with open(args.json, "w") as f:
                json.dump({"torch": torch.__version__, "threads": threads, "repeats": repeats,
                           "weight_only": weight_only}, f, indent=2)
        return
    layers = layer_rows(shapes, ms, repeats, tuple(args.isa) if args.isa else (None,))
    report(f"CPU linear layers: fp32 F.linear and torch dynamic int8 vs W4A4 (transform + quant + GEMM); backend "
           f"{ops.active_backend('cpu')}; peers: {peers_isa()}; torch {torch.__version__}, {threads} threads, "
           f"best of {repeats}",
           {"N×K": lambda r: r["shape"], "M": lambda r: r["M"], "ISA": lambda r: r["isa"],
            "fp32 ms": lambda r: r["fp32_ms"], "int8 dyn. ms": lambda r: r["int8_ms"],
            "W4A4 GEMM ms": lambda r: r["w4a4_gemm_ms"], "W4A4 layer ms": lambda r: r["w4a4_layer_ms"],
            "transform share": lambda r: f"{100 * r['transform_share']:.0f} %",
            "fp32/W4A4": lambda r: r["fp32_over_w4a4"], "int8/W4A4": lambda r: r["int8_over_w4a4"],
            "W4A4 prepared ms": lambda r: "-" if r["w4a4_prepared_ms"] is None else r["w4a4_prepared_ms"],
            "int8/prepared": lambda r: "-" if r["int8_over_prepared"] is None else r["int8_over_prepared"]}, layers)
    steps = model_rows(models, batches, repeats) if models else []
    if steps:
        report("Denoising step (one forward, answer masked) and checkpoint size, float32 vs FAIR-Calib W4A4",
               {"model": lambda r: r["model"], "batch": lambda r: r["batch"], "tokens": lambda r: r["tokens"],
                "fp32 ms": lambda r: r["fp32_step_ms"], "W4A4 ms": lambda r: r["w4a4_step_ms"],
                "fp32/W4A4": lambda r: r["step_ratio"],
                "W4A4 prepared ms": lambda r: "-" if r["w4a4_prepared_step_ms"] is None else r["w4a4_prepared_step_ms"],
                "fp32/prepared": lambda r: "-" if r["prepared_step_ratio"] is None else r["prepared_step_ratio"],
                "fp32 MB": lambda r: r["fp32_mb"],
                "bf16 MB": lambda r: r["bf16_mb"], "W4A4 MB": lambda r: r["w4a4_mb"],
                "size fp32/W4A4": lambda r: r["size_ratio_fp32"], "size bf16/W4A4": lambda r: r["size_ratio_bf16"]},
               steps)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"backend": ops.active_backend("cpu"), "peers": peers_isa(), "torch": torch.__version__,
                       "threads": threads,
                       "repeats": repeats, "layers": layers, "weight_only": weight_only, "denoising_step": steps},
                      f, indent=2)
