"""Packed linear modules.

``W4A4Linear``, ``W4A8Linear`` and ``W8A8Linear`` (weights and activations quantized, :class:`ActQuantLinear`)
replace an ``nn.Linear`` (``y = x Wᵀ + b``). Their state-dict entries, all buffers named 1:1 with the checkpoint
keys:

=========================== =========================== =====================================================
key                         dtype / shape               meaning
=========================== =========================== =====================================================
``weight_packed``           ``uint8 [out, ceil(in/2)]`` int4 weight codes (:mod:`fair_calib_hf.packing`), W4Ax
``weight_int8``             ``int8 [out, in]``          int8 weight codes, W8A8 (instead of ``weight_packed``)
``weight_scale``            ``float32 [out, 1]``        per-output-channel scale (clipping folded in):
                                                        ``c_w·max|W_row| / 7`` (int4) or ``/ 127`` (int8)
``input_clip``              ``float32 []``              activation clip ratio c in (0, 1]: ``s_x = c·absmax/7``
                                                        (int4 activations) or ``c·absmax/127`` (int8)
``bias``                    model dtype ``[out]``       only if the original Linear had one
``input_transform.left``    ``float32 [a, a]``          online Kronecker factor (only with a transform)
``input_transform.right``   ``float32 [b, b]``          online Kronecker factor, ``a · b = in``
``input_transform.diag``    ``float32 [in]``            online diagonal scale (only if it could not be folded)
=========================== =========================== =====================================================

Forward: ``x̃ = (x ⊙ diag)·(left ⊗ right)`` (identity when absent), per-token int4 (W4A4) or int8 (W4A8,
W8A8) quantization of ``x̃``,
then ``y = (Q(x̃) · Q(W)ᵀ)·s_x·s_w + b`` in the input dtype, through the ops in :mod:`fair_calib_hf.ops`.

**Prepared CPU layout** (int4 weights: W4A4 and W4A8, :class:`Int4ActQuantLinear`; the default after loading on a
CPU with AVX-512 VNNI; :meth:`Int4ActQuantLinear.prepare_cpu_layout` or :func:`prepare_cpu_layout` for a whole
model): the weight codes are held in the layout the GEMM reads directly instead of being regrouped at every call
(faster at small token counts; bit-identical results). It replaces ``weight_packed`` in memory by the
non-persistent buffer ``weight_prepared`` (uint8, 0.5 byte per weight plus padding to 64 channels × 128 codes;
``module.weight_packed`` is then ``None``, :meth:`Int4ActQuantLinear.packed_weight` rebuilds it);
``state_dict()``/saving still produce the packed ``weight_packed`` entry, loading a state dict re-prepares, and a
device or dtype move (``.to``, ``.cuda``, ``.half`` …) restores the packed buffer first (re-preparing when the
module stays on the CPU). :func:`unprepare_cpu_layout` goes back to the packed layout; ``FAIR_CALIB_CPU_LAYOUT=packed``
in the environment keeps loaded models packed.

**Dtype casts.** The float32 buffers above stay float32 whatever dtype the module or the model is cast to
(``.to(torch.bfloat16)``, ``.to(device, dtype)``, ``.half()``, ``.bfloat16()``, a parent's ``.to(dtype)``):
only ``bias`` follows the cast, as the model's float parts do. Device moves apply to every buffer. Rounding
the scales or the transform to 16 bits would break the exact inverse between the online transform and the
weight it was packed for, and the checkpoint format (float32, checked on reload).
"""
from __future__ import annotations

import torch
from torch import nn

from . import ops
from .packing import dequantize_grouped, group_count, packed_width, quantize_weight_grouped, store_codes


def _apply_keeping_float32(module: nn.Module, names: tuple[str, ...], fn, recurse: bool) -> nn.Module:
    """``nn.Module._apply(fn)`` for ``module``, except that its float32 buffers ``names`` keep float32: a
    buffer that ``fn`` converted to another dtype is replaced by the original float32 values on the device
    ``fn`` chose (a cast changes the dtype, never the values in place, so the original is intact)."""
    kept = {n: module._buffers[n] for n in names if module._buffers.get(n) is not None}
    nn.Module._apply(module, fn, recurse)
    for name, before in kept.items():
        after = module._buffers[name]
        if after is not None and after.dtype != torch.float32:
            module._buffers[name] = before.to(after.device)
    return module


class InputTransform(nn.Module):
    """Online input transform ``x ↦ (x ⊙ diag)·(left ⊗ right)``; holds only float32 buffers, which stay
    float32 under dtype casts (see the module docstring)."""

    FLOAT32_BUFFERS = ("left", "right", "diag")

    def __init__(self, in_features: int, factors: tuple[int, int], has_diag: bool = False, device=None):
        super().__init__()
        a, b = factors
        if a * b != in_features:
            raise ValueError(f"Kronecker factors {a}x{b} do not multiply to in_features={in_features}")
        self.register_buffer("left", torch.eye(a, dtype=torch.float32, device=device))
        self.register_buffer("right", torch.eye(b, dtype=torch.float32, device=device))
        if has_diag:
            self.register_buffer("diag", torch.ones(in_features, dtype=torch.float32, device=device))
        else:
            self.diag = None

    def _apply(self, fn, recurse=True):
        return _apply_keeping_float32(self, self.FLOAT32_BUFFERS, fn, recurse)

    def matrix(self) -> torch.Tensor:
        """The dense ``[in, in]`` matrix ``diag(d)·(left ⊗ right)`` (for dequantization and tests)."""
        p = torch.kron(self.left.double(), self.right.double())
        if self.diag is not None:
            p = self.diag.double()[:, None] * p
        return p


class PackedLinear(nn.Module):
    """Base of every packed linear (:class:`ActQuantLinear`: :class:`W4A4Linear`, :class:`W4A8Linear`,
    :class:`W8A8Linear`; :class:`WeightOnlyLinear`): what the checkpoint code,
    ``dequantize()`` and the CPU-layout helpers rely on. Subclasses define ``expected_buffers()``,
    ``to_linear(dtype)``, ``set_weight_codes(codes)``, ``prepare_cpu_layout()`` / ``unprepare_cpu_layout()`` and
    ``is_prepared``. The base class keeps ``FLOAT32_BUFFERS`` float32 under dtype casts, and goes through the
    stored layout for device moves and state-dict loads (preparing again after them when the module was prepared
    and is on the CPU)."""

    FLOAT32_BUFFERS: tuple[str, ...] = ("weight_scale",)
    is_prepared = False
    bits: int = 4  # weight bits: the stored codes' width (GPTQ reads ``bits`` / ``group_size`` of every packed linear)

    @property
    def codes_name(self) -> str:
        """The state-dict name of the stored codes: ``weight_packed`` (4-bit) or ``weight_int8`` (8-bit)."""
        return "weight_packed" if self.bits == 4 else "weight_int8"

    def _codes_spec(self, in_features: int, out_features: int):
        """``(shape, dtype)`` of the stored codes: ``uint8 [out, ceil(in/2)]`` (4-bit) or ``int8 [out, in]``."""
        if self.bits == 4:
            return (out_features, packed_width(in_features)), torch.uint8
        return (out_features, in_features), torch.int8

    @torch.no_grad()
    def set_weight_codes(self, codes: torch.Tensor) -> None:
        """Replace the weight codes (int8 ``[out, in]`` on this module's grid) keeping the scales (GPTQ's
        rounding on the RTN grid)."""
        prepared = self.is_prepared
        self.unprepare_cpu_layout()
        self._buffers[self.codes_name].copy_(store_codes(codes, self.bits))
        if prepared:
            self.prepare_cpu_layout()

    def prepare_cpu_layout(self) -> bool:
        return False

    def unprepare_cpu_layout(self) -> None:
        return None

    def _apply(self, fn, recurse=True):
        prepared = self.is_prepared
        if prepared:
            self.unprepare_cpu_layout()
        result = _apply_keeping_float32(self, self.FLOAT32_BUFFERS, fn, recurse)
        if prepared and self.weight_scale.device.type == "cpu":
            self.prepare_cpu_layout()
        return result

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        prepared = self.is_prepared
        self.unprepare_cpu_layout()
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
        finally:
            if prepared:
                self.prepare_cpu_layout()


class ActQuantLinear(PackedLinear):
    """Base of the linears with quantized weights **and** dynamically quantized inputs (:class:`W4A4Linear`,
    :class:`W4A8Linear`, :class:`W8A8Linear`; see the module docstring): one output-channel scale per row, an
    activation clip, an optional online transform. A subclass sets the weight bits ``bits`` (the stored codes:
    ``weight_packed`` for 4, ``weight_int8`` for 8), the activation bits ``a_bits`` and :meth:`_matmul` (the
    quantize and GEMM ops of its precision). ``weight_scale`` and ``input_clip`` stay float32 under dtype casts;
    ``bias`` follows them."""

    FLOAT32_BUFFERS = ("weight_scale", "input_clip")
    a_bits: int = 4
    group_size = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        dtype: torch.dtype | None = None,
        device=None,
        transform_factors: tuple[int, int] | None = None,
        transform_diag: bool = False,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        codes_shape, codes_dtype = self._codes_spec(in_features, out_features)
        self.register_buffer(self.codes_name, torch.zeros(codes_shape, dtype=codes_dtype, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.register_buffer("input_clip", torch.ones((), dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype or torch.float32, device=device))
        else:
            self.bias = None
        if transform_factors is not None:
            self.input_transform = InputTransform(in_features, transform_factors, transform_diag, device=device)
        else:
            self.input_transform = None

    def stored_codes(self) -> torch.Tensor:
        """The stored weight codes (``uint8 [out, ceil(in/2)]`` packed int4 or ``int8 [out, in]``)."""
        return self._buffers[self.codes_name]

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        weight_clip: torch.Tensor | float = 1.0,
        input_clip: float = 1.0,
        weight: torch.Tensor | None = None,
        transform: tuple | None = None,
    ) -> "ActQuantLinear":
        """Quantize ``linear`` (RTN, per output channel, :func:`fair_calib_hf.packing.quantize_weight_grouped`).
        ``weight`` overrides ``linear.weight`` (e.g. a transformed weight ``W·P^{-T}``); ``weight_clip`` is a
        scalar or ``[out, 1]`` ratio in (0, 1]; ``transform = (left, right, diag or None)`` fills the online input
        transform."""
        w = linear.weight if weight is None else weight
        module = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            dtype=linear.bias.dtype if linear.bias is not None else None,
            device=w.device,
            transform_factors=None if transform is None else (transform[0].shape[0], transform[1].shape[0]),
            transform_diag=transform is not None and transform[2] is not None,
        )
        if transform is not None:
            module.input_transform.left.copy_(transform[0].detach())
            module.input_transform.right.copy_(transform[1].detach())
            if transform[2] is not None:
                module.input_transform.diag.copy_(transform[2].detach())
        stored, scale = quantize_weight_grouped(w, cls.bits, None, weight_clip)
        module._buffers[module.codes_name].copy_(stored)
        module.weight_scale.copy_(scale)
        module.input_clip.fill_(float(input_clip))
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def expected_buffers(self) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
        """``{state-dict name: (shape, dtype)}`` of every buffer; ``dtype None`` = any floating dtype."""
        spec = {
            self.codes_name: self._codes_spec(self.in_features, self.out_features),
            "weight_scale": ((self.out_features, 1), torch.float32),
            "input_clip": ((), torch.float32),
        }
        if self.bias is not None:
            spec["bias"] = ((self.out_features,), None)
        if self.input_transform is not None:
            t = self.input_transform
            spec["input_transform.left"] = (tuple(t.left.shape), torch.float32)
            spec["input_transform.right"] = (tuple(t.right.shape), torch.float32)
            if t.diag is not None:
                spec["input_transform.diag"] = ((self.in_features,), torch.float32)
        return spec

    def _matmul(self, x2: torch.Tensor, left, right, diag) -> torch.Tensor:
        """``[M, in] → [M, out]`` in ``x2.dtype``: the precision's quantize op, then its GEMM."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        t = self.input_transform
        left, right, diag = (t.left, t.right, t.diag) if t is not None else (None, None, None)
        return self._matmul(x2, left, right, diag).reshape(*shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """float32 ``[out, in]`` weight codes times scales (the transform not folded in)."""
        return dequantize_grouped(self.stored_codes(), self.weight_scale, self.bits, None, self.in_features)

    @torch.no_grad()
    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A float ``nn.Linear`` computing ``x ↦ x·P·Q(W)ᵀ + b`` (the transform folded in, activation
        quantization dropped). Used by ``model.dequantize()``."""
        w = self.dequantized_weight().double()
        if self.input_transform is not None:
            w = w @ self.input_transform.matrix().t()
        dtype = dtype or (self.bias.dtype if self.bias is not None else torch.float32)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight_scale.device, dtype=dtype)
        linear.weight.copy_(w.to(dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        t = self.input_transform
        tr = "none" if t is None else f"kronecker {t.left.shape[0]}x{t.right.shape[0]}" + (" +diag" if t.diag is not None else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"w{self.bits}a{self.a_bits}, transform={tr}, backend={ops.active_backend(self.weight_scale.device.type)}"
                + (", prepared cpu layout" if self.is_prepared else ""))


class Int4ActQuantLinear(ActQuantLinear):
    """Base of the linears with int4 weights and quantized activations (:class:`W4A4Linear`, :class:`W4A8Linear`):
    the packed codes ``weight_packed`` and, on CPUs with AVX-512 VNNI, the prepared CPU layout of the int4-weight
    GEMMs (:meth:`prepare_cpu_layout`; the same layout serves W4A4 and W4A8). A subclass sets ``a_bits`` and
    :meth:`_matmul`, which runs the GEMM on ``weight_prepared`` when that is held and on ``weight_packed`` otherwise."""

    bits = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_prepared", None, persistent=False)  # see prepare_cpu_layout

    @property
    def is_prepared(self) -> bool:
        return self.weight_prepared is not None

    def prepare_cpu_layout(self) -> bool:
        """Hold the weight codes in the CPU VNNI GEMM's prepared layout (:func:`fair_calib_hf.ops.cpu.prepare_weight`,
        the buffer ``weight_prepared``) instead of ``weight_packed`` (freed: ``None`` until :meth:`unprepare_cpu_layout`
        or a move restores it; :meth:`packed_weight` rebuilds the codes): see the module docstring. Idempotent. Returns whether the module is now prepared: ``False``
        (nothing changed) off the CPU, without the compiled kernels, or on a CPU without AVX-512 VNNI."""
        if self.weight_prepared is not None:
            return True
        if self.weight_packed.device.type != "cpu" or not ops.cpu.prepared_layout_available():
            return False
        self._buffers["weight_prepared"] = ops.cpu.prepare_weight(self.weight_packed)
        self._buffers["weight_packed"] = None
        return True

    def unprepare_cpu_layout(self) -> None:
        """Back to the packed layout (``weight_packed`` restored, ``weight_prepared`` freed); no-op when not prepared."""
        if self.weight_prepared is None:
            return
        self._buffers["weight_packed"] = self.packed_weight()
        self._buffers["weight_prepared"] = None

    def packed_weight(self) -> torch.Tensor:
        """The packed codes ``uint8 [out, ceil(in/2)]`` (rebuilt from the prepared layout when the module holds
        that instead: a new tensor each call)."""
        if self.weight_prepared is None:
            return self.weight_packed
        return ops.cpu.unprepare_weight(self.weight_prepared, self.out_features, packed_width(self.in_features))

    stored_codes = packed_weight

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.weight_prepared is None:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        self._buffers["weight_packed"] = self.packed_weight()  # the checkpoint format, for this call only
        try:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        finally:
            self._buffers["weight_packed"] = None


class W4A4Linear(Int4ActQuantLinear):
    """Linear layer with int4 weights and dynamically int4-quantized inputs (see the module docstring), with the
    prepared CPU layout of the AVX-512 VNNI GEMM (:class:`Int4ActQuantLinear`)."""

    bits, a_bits = 4, 4

    def _matmul(self, x2, left, right, diag):
        x_packed, x_scale = ops.quantize_act_int4(x2, left, right, diag, self.input_clip)
        if self.weight_prepared is not None:
            return ops.w4a4_gemm_prepared(x_packed, x_scale, self.weight_prepared, self.weight_scale, self.bias,
                                          self.out_features, self.in_features, x2.dtype)
        return ops.w4a4_gemm(x_packed, x_scale, self.weight_packed, self.weight_scale, self.bias, self.in_features,
                             x2.dtype)


class W4A8Linear(Int4ActQuantLinear):
    """Linear layer with int4 weights (the W4A4 byte layout) and dynamically int8-quantized inputs
    (``s_x = c·max|x̃|/127`` per token; :func:`fair_calib_hf.ops.w4a8_gemm`), with the prepared CPU layout of the
    AVX-512 VNNI GEMM (:class:`Int4ActQuantLinear`)."""

    bits, a_bits = 4, 8

    def _matmul(self, x2, left, right, diag):
        x_q, x_scale = ops.quantize_act_int8(x2, left, right, diag, self.input_clip)
        if self.weight_prepared is not None:
            return ops.w4a8_gemm_prepared(x_q, x_scale, self.weight_prepared, self.weight_scale, self.bias,
                                          self.out_features, self.in_features, x2.dtype)
        return ops.w4a8_gemm(x_q, x_scale, self.weight_packed, self.weight_scale, self.bias, self.in_features,
                             x2.dtype)


class W8A8Linear(ActQuantLinear):
    """Linear layer with int8 weights (``weight_int8 [out, in]``, ``s_w = c·max|W_row|/127``) and dynamically
    int8-quantized inputs (:func:`fair_calib_hf.ops.w8a8_gemm`)."""

    bits, a_bits = 8, 8

    def _matmul(self, x2, left, right, diag):
        x_q, x_scale = ops.quantize_act_int8(x2, left, right, diag, self.input_clip)
        return ops.w8a8_gemm(x_q, x_scale, self.weight_int8, self.weight_scale, self.bias, x2.dtype)


ACT_QUANT_LINEARS = {(m.bits, m.a_bits): m for m in (W4A4Linear, W4A8Linear, W8A8Linear)}
"""The packed linear of each ``(w_bits, a_bits)`` with quantized activations."""


def prepare_cpu_layout(model: nn.Module) -> int:
    """``prepare_cpu_layout()`` on every packed linear (:class:`PackedLinear`) of ``model`` (call it once after loading, on
    the CPU); returns how many were prepared (0 where the layout is not available)."""
    return sum(1 for m in model.modules() if isinstance(m, PackedLinear) and m.prepare_cpu_layout())


def unprepare_cpu_layout(model: nn.Module) -> int:
    """``unprepare_cpu_layout()`` on every prepared packed linear of ``model``: back to the stored codes
    (``weight_packed`` / ``weight_int8``); returns how many were unprepared."""
    modules = [m for m in model.modules() if isinstance(m, PackedLinear) and m.is_prepared]
    for m in modules:
        m.unprepare_cpu_layout()
    return len(modules)


CPU_LAYOUT_ENV = "FAIR_CALIB_CPU_LAYOUT"
"""Environment variable read by :func:`prepare_loaded_model`: ``prepared`` (default) or ``packed``."""


def cpu_layout_choice() -> str:
    """``FAIR_CALIB_CPU_LAYOUT`` (``"prepared"``, the default, or ``"packed"``); raises ``ValueError`` naming the
    variable and its values for anything else (the quantizer checks it before loading anything)."""
    import os

    choice = os.environ.get(CPU_LAYOUT_ENV, "prepared").strip().lower() or "prepared"
    if choice not in ("prepared", "packed"):
        raise ValueError(f"{CPU_LAYOUT_ENV}={choice!r}: use 'prepared' (the default: the CPU GEMM's own weight "
                         "layout, bit-identical results) or 'packed' (keep weight_packed in memory)")
    return choice


def prepare_loaded_model(model: nn.Module) -> int:
    """What the quantizer does after loading or calibrating: :func:`prepare_cpu_layout` on ``model`` unless
    ``FAIR_CALIB_CPU_LAYOUT=packed`` (:func:`cpu_layout_choice`). Only modules whose weights are materialised on
    the CPU are prepared (offloaded ones sit on the ``meta`` device and stay packed); returns how many were
    prepared (0 without AVX-512 VNNI or the compiled kernels)."""
    return 0 if cpu_layout_choice() == "packed" else prepare_cpu_layout(model)


class WeightOnlyLinear(PackedLinear):
    """Linear layer with ``bits``-bit weights (4 or 8) and activations left in their dtype (W4A16 / W8A16).

    =========================== =========================== ==================================================
    key                         dtype / shape               meaning
    =========================== =========================== ==================================================
    ``weight_packed``           ``uint8 [out, ceil(in/2)]`` 4-bit: int4 codes, the W4A4 byte layout
    ``weight_int8``             ``int8 [out, in]``          8-bit: the codes
    ``weight_scale``            ``float32 [out, G]``        per output channel (``G = 1``) or per group of
                                                            ``group_size`` input channels (``G = ceil(in/gs)``)
    ``bias``                    model dtype ``[out]``       only if the original Linear had one
    =========================== =========================== ==================================================

    Forward: ``y = x · (codes ⊙ s_w)ᵀ + b`` (:func:`fair_calib_hf.ops.weight_only_gemm`; the reference computes
    in fp32 and returns the input dtype). On a CPU with the compiled path (torch's int4 weight-only kernel,
    :mod:`fair_calib_hf.ops.weight_only_cpu`), :meth:`prepare_cpu_layout` converts 4-bit codes to torch's own
    packed layout (non-persistent buffers ``weight_int4pack`` and ``scales_and_zeros``; ``weight_packed`` is freed,
    rebuilt exactly for saving and device moves; shapes whose layout cannot be inverted stay unprepared). ``weight_scale`` stays float32
    under dtype casts; ``bias`` follows them."""

    FLOAT32_BUFFERS = ("weight_scale",)

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group_size: int | None = None,
                 bias: bool = False, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"WeightOnlyLinear: bits={bits!r}; allowed: 4, 8")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        codes_shape, codes_dtype = self._codes_spec(in_features, out_features)
        self.register_buffer(self.codes_name, torch.zeros(codes_shape, dtype=codes_dtype, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, group_count(in_features, group_size),
                                                        dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype or torch.float32, device=device))
        else:
            self.bias = None
        self.register_buffer("weight_int4pack", None, persistent=False)
        self.register_buffer("scales_and_zeros", None, persistent=False)

    @property
    def is_prepared(self) -> bool:
        return self.weight_int4pack is not None

    def stored_codes(self) -> torch.Tensor:
        """The stored codes (rebuilt from the prepared layout when ``weight_packed`` was freed)."""
        stored = self._buffers[self.codes_name]
        if stored is None:
            stored = ops.weight_only_cpu.unprepare_int4(self.weight_int4pack, self.out_features, self.in_features)
        return stored

    def prepare_cpu_layout(self) -> bool:
        """Convert 4-bit codes to torch's CPU int4 weight-only layout (:func:`.ops.weight_only_cpu.prepare_int4`);
        idempotent. 8-bit weights keep their layout but are copied to aligned memory when they are not
        (:func:`.ops.weight_only_cpu.aligned`). Returns whether the module is now prepared: ``False`` for 8-bit
        weights, off the CPU, or for a
        shape torch's kernel does not take (``out`` not a multiple of 16, ``in`` not a multiple of the group, a
        layout this release cannot invert)."""
        if self.is_prepared:
            return True
        if self.bits == 8 and self.weight_int8.device.type == "cpu" and not ops.weight_only_cpu.aligned(self.weight_int8):
            self._buffers["weight_int8"] = self.weight_int8.clone()  # torch's int8 kernel needs aligned data
        if self.bits != 4 or self.weight_scale.device.type != "cpu":
            return False
        prepared = ops.weight_only_cpu.prepare_int4(self.weight_packed, self.weight_scale, self.in_features,
                                                    self.group_size)
        if prepared is None:
            return False
        self._buffers["weight_int4pack"], self._buffers["scales_and_zeros"] = prepared
        self._buffers["weight_packed"] = None  # rebuilt exactly from the prepared layout when needed
        return True

    def unprepare_cpu_layout(self) -> None:
        """Back to the stored codes only (prepared buffers freed); no-op when not prepared."""
        if not self.is_prepared:
            return
        self._buffers["weight_packed"] = self.stored_codes()
        self._buffers["weight_int4pack"] = self._buffers["scales_and_zeros"] = None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self._buffers.get(self.codes_name) is not None:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        self._buffers[self.codes_name] = self.stored_codes()  # the checkpoint format, for this call only
        try:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        finally:
            self._buffers[self.codes_name] = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int | None = None,
                    weight_clip: torch.Tensor | float = 1.0, weight: torch.Tensor | None = None) -> "WeightOnlyLinear":
        """Quantize ``linear`` round-to-nearest (:func:`fair_calib_hf.packing.quantize_weight_grouped`);
        ``weight`` overrides ``linear.weight``; ``weight_clip`` is a scalar or ``[out, 1]`` ratio in (0, 1]."""
        w = linear.weight if weight is None else weight
        module = cls(linear.in_features, linear.out_features, bits, group_size, bias=linear.bias is not None,
                     dtype=linear.bias.dtype if linear.bias is not None else None, device=w.device)
        stored, scale = quantize_weight_grouped(w, bits, group_size, weight_clip)
        module._buffers[module.codes_name].copy_(stored)
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def expected_buffers(self) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
        """``{state-dict name: (shape, dtype)}`` of every buffer; ``dtype None`` = any floating dtype."""
        spec = {self.codes_name: self._codes_spec(self.in_features, self.out_features),
                "weight_scale": ((self.out_features, group_count(self.in_features, self.group_size)), torch.float32)}
        if self.bias is not None:
            spec["bias"] = ((self.out_features,), None)
        return spec

    def dequantized_weight(self) -> torch.Tensor:
        """float32 ``[out, in]`` weight the module multiplies by."""
        return dequantize_grouped(self.stored_codes(), self.weight_scale, self.bits, self.group_size,
                                  self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.is_prepared:
            y = ops.weight_only_cpu.int4pack_linear(x2, self.weight_int4pack, self.scales_and_zeros,
                                                    self.weight_scale, self.bias, self.out_features,
                                                    self.in_features, self.group_size)
        else:
            y = ops.weight_only_gemm(x2, self._buffers[self.codes_name], self.weight_scale, self.bias, self.bits,
                                     self.group_size or 0, self.in_features)
        return y.reshape(*shape[:-1], self.out_features)

    @torch.no_grad()
    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A float ``nn.Linear`` computing ``x ↦ x·Q(W)ᵀ + b`` (used by ``model.dequantize()``)."""
        dtype = dtype or (self.bias.dtype if self.bias is not None else torch.float32)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight_scale.device, dtype=dtype)
        linear.weight.copy_(self.dequantized_weight().to(dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        groups = "per-channel" if self.group_size is None else f"group {self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"w{self.bits}a16, {groups}" + (", torch int4 cpu layout" if self.is_prepared else ""))
