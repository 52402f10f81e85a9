"""The precisions this release packs: one entry each, read by the config (what is valid), calibration (which
methods apply) and the checkpoint skeleton (which packed module to build).

=========  ======  ======  ====================  ==========================================================
name       w_bits  a_bits  group_size            packed module
=========  ======  ======  ====================  ==========================================================
``w4a4``   4       4       per channel           :class:`~fair_calib_hf.modules.W4A4Linear` (int4 × int4 GEMM)
``w4a8``   4       8       per channel           :class:`~fair_calib_hf.modules.W4A8Linear` (int8 × int4 GEMM)
``w8a8``   8       8       per channel           :class:`~fair_calib_hf.modules.W8A8Linear` (int8 × int8 GEMM)
``w4a16``  4       16      per channel, 32/64/128 :class:`~fair_calib_hf.modules.WeightOnlyLinear`
``w8a16``  8       16      per channel           :class:`~fair_calib_hf.modules.WeightOnlyLinear`
=========  ======  ======  ====================  ==========================================================

``a_bits=16`` means "activations not quantized": they stay in the model's dtype (fp32, bf16 or fp16), the
weights are dequantized on the fly (compressed-tensors calls these W4A16 / W8A16). Weight-only precisions take
no input transform (the transforms of ``quarot`` / ``flatquant`` / ``fair_calib`` exist to make activations
quantizable), so their methods are ``rtn`` and ``gptq`` (with the Stage I prior in its Hessian:
``gptq_position_weights="prior"``).

``a_bits=8`` quantizes activations per token, symmetric, dynamic, to int8 (``s_x = clip·max|x̃|/127``), with
the same online transforms, clips and methods as W4A4; Stage II fits them on the 8-bit grid.
"""
from __future__ import annotations

from dataclasses import dataclass

GROUP_SIZES = (32, 64, 128)
"""Group sizes along ``K`` a weight-only 4-bit checkpoint may use (``None``: one scale per output channel)."""


@dataclass(frozen=True)
class Precision:
    """One packed precision: bit widths, the group sizes and methods it admits."""

    name: str
    w_bits: int
    a_bits: int
    group_sizes: tuple  # allowed group_size values, None = per output channel
    methods: tuple  # calibration methods that can produce it

    @property
    def weight_only(self) -> bool:
        """Activations stay in the model's dtype."""
        return self.a_bits == 16

    def packed_module(self):
        """The packed linear class this precision builds (:mod:`fair_calib_hf.modules`)."""
        from .modules import ACT_QUANT_LINEARS, WeightOnlyLinear

        return WeightOnlyLinear if self.weight_only else ACT_QUANT_LINEARS[(self.w_bits, self.a_bits)]

    def describe(self) -> str:
        groups = ", ".join("per-channel" if g is None else f"g{g}" for g in self.group_sizes)
        return f"W{self.w_bits}A{self.a_bits} ({groups}; methods {', '.join(self.methods)})"


PRECISIONS = {
    p.name: p for p in (
        Precision("w4a4", 4, 4, (None,), ("rtn", "gptq", "quarot", "flatquant", "fair_calib")),
        Precision("w4a8", 4, 8, (None,), ("rtn", "gptq", "quarot", "flatquant", "fair_calib")),
        Precision("w8a8", 8, 8, (None,), ("rtn", "gptq", "quarot", "flatquant", "fair_calib")),
        Precision("w4a16", 4, 16, (None,) + GROUP_SIZES, ("rtn", "gptq")),
        Precision("w8a16", 8, 16, (None,), ("rtn", "gptq")),
    )
}


def valid_combinations() -> str:
    """One line listing every valid ``w_bits`` / ``a_bits`` / ``group_size`` / method combination."""
    return "; ".join(p.describe() for p in PRECISIONS.values())


def find_precision(w_bits, a_bits) -> Precision | None:
    """The :class:`Precision` of ``(w_bits, a_bits)``, or ``None`` when this release has none."""
    for p in PRECISIONS.values():
        if (p.w_bits, p.a_bits) == (w_bits, a_bits) and all(
                isinstance(b, int) and not isinstance(b, bool) for b in (w_bits, a_bits)):  # 8.0 is not a width
            return p
    return None


def precision_of(config) -> Precision:
    """The :class:`Precision` of a validated ``FairCalibConfig``; ``ValueError`` listing the valid ones if none."""
    p = find_precision(config.w_bits, config.a_bits)
    if p is None:
        raise ValueError(f"FairCalibConfig: invalid w_bits={config.w_bits!r}, a_bits={config.a_bits!r}; "
                         f"valid: {valid_combinations()}")
    return p
