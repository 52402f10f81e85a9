"""Stage II: FlatQuant-style block-wise calibration with a position-weighted hidden-state loss.

Per site (see :mod:`.sites`) the learnable parameters are the Kronecker factors ``L [a, a]``, ``R [b, b]``
(sizes from :func:`.transforms.kronecker_factors`; initialised to a randomised Hadamard-type orthogonal pair,
random orthogonal for a size with no Hadamard matrix; inverted directly in fp32), the diagonal
``d [in]`` (SmoothQuant-style init ``d = w_max^{1−α} / x_max^α``, α = 0.3) and the activation clip logit
(LAC, one per site, ``σ(4) ≈ 0.982`` at init); per linear, one weight clip logit per output channel (LWC).
With ``lac=False`` / ``lwc=False`` that clip is not learned and is exactly ``a_clip_ratio`` / ``w_clip_ratio``
(default 1.0: no clipping), not the frozen ``σ(4)``. While training, every quantized linear computes

    x̃ = (x ⊙ d)·(L ⊗ R),   W̃ = (W ⊘ d)·(L ⊗ R)^{-T},   y = Q_tok(x̃; σ(lac)) · Q_ch(W̃; σ(lwc))ᵀ + b

with symmetric fake quantization on the config's grids (int4, or int8 for ``a_bits=8`` / ``w_bits=8``) and
straight-through rounding. The block is fitted in fp32 to

    loss = mean_{samples, positions i} w̄_i · mean_hidden (h_q(i) − h_fp(i))²

(``w̄ ≡ 1``: plain FlatQuant MSE; per-state weights ``w̄_{s,i}``, one row per calibration state, for
``state_weights="frontier"``, :mod:`.states`), with AdamW (no weight decay) and a cosine schedule down to 1e-3 × lr,
each step's loss divided by its own detached value (FlatQuant). Then everything is folded and packed
(:func:`.sites.pack_with_transform`): ``d`` into the feeding RMSNorm or the up-projection rows when the
adapter knows how, the Kronecker factors and any unfoldable ``d`` into the module's transform buffers.
"""
from __future__ import annotations

import math
import time
import zlib

import torch
from torch import nn

from .. import cpu_threads
from ..architectures import ModelAdapter
from ..targets import set_submodule
from .fake_quant import fake_quant_rows, ste_round  # noqa: F401  (ste_round: re-exported)
from .block_loop import BlockInput, block_batches, run_block, stack_block_inputs
from .gptq import scale_target_rows
from .sites import Site, diag_fold_target, discover_sites, pack_with_transform
from .transforms import kron_apply_gemms, kronecker_factors, orthogonal_hadamard_factors, transform_weight

CLIP_INIT = 4.0


def weighted_mse(h_q: torch.Tensor, h_fp: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``mean_{b,i} w_{b,i} · mean_d (h_q − h_fp)²`` for ``h [B, N, D]``. ``weights``: ``[P]`` (one weight per
    position, the same for every sample: ``w_{b,i} = w_i``), ``[B, P]`` (per sample, e.g. per calibration state),
    the last ``N`` positions used (``P ≥ N``), or ``None`` (all ones, which is exactly ``F.mse_loss``).
    ``ValueError`` for a ``[B, P]`` whose ``B`` differs from ``h``'s."""
    per_pos = (h_q.float() - h_fp.float()).pow(2).mean(-1)
    if weights is None:
        return per_pos.mean()
    if weights.dim() == 1:
        return (per_pos * weights.to(per_pos)[None, -per_pos.shape[1]:]).mean()
    if weights.shape[0] != per_pos.shape[0]:
        raise ValueError(f"weighted_mse: {weights.shape[0]} rows of per-sample weights for {per_pos.shape[0]} "
                         "samples")
    return (per_pos * weights.to(per_pos)[:, -per_pos.shape[1]:]).mean()


class SiteParams(nn.Module):
    """Learnable transform of one site, and the site's fake-quantized forward: the linears registered with
    :meth:`add_member` (each a :class:`FitLinear`) share the transform, so their float weights are stacked
    once (``[Σ out, in]``), transformed and fake-quantized together once per optimizer step, and applied to
    the site's input in ONE matmul whose output columns are split among the linears. Per-row quantization
    makes the stacked quantized weight row for row each linear's own (bit for bit); the one matmul agrees with
    separate ones to fp32 rounding (BLAS may take another kernel for another width), and the gradients of the
    shared transform are summed in another order than per-linear graphs would: a last-bits difference."""

    def __init__(self, in_features: int, x_absmax: torch.Tensor, w_absmax: torch.Tensor, config, generator):
        super().__init__()
        left, right = orthogonal_hadamard_factors(in_features, generator, kronecker_factors(in_features))
        self.left, self.right = nn.Parameter(left.clone()), nn.Parameter(right.clone())
        if config.add_diag:
            alpha = config.diag_alpha
            d = (w_absmax.clamp_min(1e-5).pow(1 - alpha) / x_absmax.clamp_min(1e-5).pow(alpha)).clamp_min(1e-5)
            self.diag = nn.Parameter(d.float())
        else:
            self.diag = None
        self.lac = nn.Parameter(torch.tensor(CLIP_INIT), requires_grad=bool(config.lac))
        self.fixed_clip = None if config.lac else float(config.a_clip_ratio)
        self.a_bits, self.w_bits = int(config.a_bits), int(config.w_bits)  # the fake-quantization grids
        self.members: list = []  # FitLinear, in registration order (a plain list: not submodules)
        self._frozen = None  # (stacked float weight [Σ out, in], stacked bias [Σ out] or None)
        self._cache = None  # (input x, per-member outputs) of the last forward
        self._inverse = None
        self._weight = None

    def add_member(self, fit: "FitLinear") -> int:
        """Register a linear reading this site's input; returns its index among the members."""
        self.members.append(fit)
        self._frozen = self._cache = self._weight = None
        return len(self.members) - 1

    def new_step(self) -> None:
        """Forget everything computed from the parameters (after each forward, before the optimizer step)."""
        self._cache = self._inverse = self._weight = None

    def input_clip(self) -> torch.Tensor:
        """The activation clip ratio: ``σ(lac)`` when learned, else exactly ``a_clip_ratio`` (1.0: none)."""
        if self.fixed_clip is not None:
            return torch.tensor(self.fixed_clip, device=self.lac.device)
        return torch.sigmoid(self.lac)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """``Q_tok((x ⊙ d)·(L ⊗ R); σ(lac))`` in fp32, ``x [..., in]``."""
        xt = x.float() * self.diag if self.diag is not None else x.float()
        return fake_quant_rows(kron_apply_gemms(xt, self.left, self.right), self.input_clip(), self.a_bits)

    def inverse_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L⁻ᵀ, R⁻ᵀ)``, computed once per optimizer step (cleared by :meth:`new_step`)."""
        if self._inverse is None:
            self._inverse = (torch.linalg.inv(self.left).t(), torch.linalg.inv(self.right).t())
        return self._inverse

    def transform_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``(W ⊘ d)·(L ⊗ R)^{-T}`` for ``w [out, in]`` in fp32 (:func:`.transforms.transform_weight`, with the
        step's cached inverses and :func:`.transforms.kron_apply_gemms`)."""
        return transform_weight(w.float(), self.left, self.right, self.diag, self.inverse_factors(),
                                apply=kron_apply_gemms)

    def _stacked(self):
        """``(W [Σ out, in], b [Σ out] or None)``: the members' frozen fp32 weights stacked (and biases, when
        every member has one). An fp32 member weight becomes a view of the stack (same values), so stacking
        does not hold a second copy of the site's weights."""
        if self._frozen is None:
            linears = [m.linear for m in self.members]
            weight = linears[0].weight.detach().float()
            if len(linears) > 1:
                weight = torch.cat([lin.weight.detach().float() for lin in linears])
                start = 0
                for lin in linears:
                    if lin.weight.dtype == weight.dtype and lin.weight.device == weight.device:
                        lin.weight.data = weight[start:start + lin.out_features]
                    start += lin.out_features
            bias = None
            if all(lin.bias is not None for lin in linears):
                bias = torch.cat([lin.bias.detach().float() for lin in linears])
            self._frozen = (weight, bias)
        return self._frozen

    def quantized_weight(self) -> torch.Tensor:
        """``Q_ch(W̃; σ(lwc))`` of all members stacked, ``[Σ out, in]`` fp32, built once per optimizer step."""
        if self._weight is None:
            if len(self.members) == 1:
                clip = self.members[0].weight_clip()
            elif all(m.fixed_clip is None for m in self.members):
                clip = torch.sigmoid(torch.cat([m.lwc for m in self.members]))
            else:
                clip = torch.cat([m.weight_clip() for m in self.members])
            self._weight = fake_quant_rows(self.transform_weight(self._stacked()[0]), clip, self.w_bits)
        return self._weight

    def member_output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Member ``index``'s fp32 output ``Q_tok(x̃) · Q_ch(W̃)ᵀ + b`` for input ``x [..., in]``; one matmul for
        all members per distinct input (cached by identity of ``x`` until :meth:`new_step`)."""
        if self._cache is None or self._cache[0] is not x:
            y = self.transform_input(x) @ self.quantized_weight().t()
            bias = self._stacked()[1]
            if bias is not None:
                y = y + bias
            if len(self.members) == 1:
                outs = (y,)
            else:
                outs = y.split([m.linear.out_features for m in self.members], -1)
                if bias is None:
                    outs = tuple(o + m.linear.bias.float() if m.linear.bias is not None else o
                                 for o, m in zip(outs, self.members))
            self._cache = (x, outs)
        return self._cache[1][index]


class FitLinear(nn.Module):
    """A target linear during Stage II: frozen float weight, the site's transform, its own LWC logits. Its
    output is computed by the site (:meth:`SiteParams.member_output`) together with the other linears that
    read the same input."""

    def __init__(self, linear: nn.Linear, site: SiteParams, config):
        super().__init__()
        self.linear = linear
        self.lwc = nn.Parameter(torch.full((linear.out_features, 1), CLIP_INIT), requires_grad=bool(config.lwc))
        self.fixed_clip = None if config.lwc else float(config.w_clip_ratio)
        object.__setattr__(self, "site", site)  # not a submodule: the site is shared and owns the transform
        self.index = site.add_member(self)

    def weight_clip(self) -> torch.Tensor:
        """Per-output-channel clip ratios ``[out, 1]``: ``σ(lwc)`` when learned, else exactly ``w_clip_ratio``
        (1.0: none)."""
        if self.fixed_clip is not None:
            return torch.full_like(self.lwc, self.fixed_clip)
        return torch.sigmoid(self.lwc)

    def forward(self, x):
        return self.site.member_output(x, self.index).to(x.dtype)


def invert_factors_together(params: list[SiteParams]) -> None:
    """Set every site's ``(L⁻ᵀ, R⁻ᵀ)`` for this step with one batched ``torch.linalg.inv`` per factor size
    (a block's sites share a few sizes, e.g. 8, 16, 22): fewer, larger kernels forward and backward. Each
    matrix is inverted by the same LAPACK routine as alone (same result)."""
    by_size: dict[int, list[torch.Tensor]] = {}
    for sp in params:
        for factor in (sp.left, sp.right):
            by_size.setdefault(factor.shape[0], []).append(factor)
    inverses = {}
    for size, factors in by_size.items():
        inv = torch.linalg.inv(torch.stack(factors)) if len(factors) > 1 else torch.linalg.inv(factors[0])[None]
        inverses[size] = iter(inv.unbind(0))
    for sp in params:
        sp._inverse = (next(inverses[sp.left.shape[0]]).t(), next(inverses[sp.right.shape[0]]).t())


def _batched_loss(block, inputs: list[BlockInput], targets: list[torch.Tensor], weights) -> torch.Tensor:
    """Mean weighted MSE over the samples ``inputs`` (one forward for all of them when their calls stack,
    :func:`.block_loop.stack_block_inputs`; one per sample otherwise). ``weights``: as :func:`weighted_mse`
    takes them, a ``[B, P]`` tensor holding one row per sample of ``inputs``."""
    stacked = stack_block_inputs(inputs)
    if stacked is not None:
        return weighted_mse(run_block(block, stacked), torch.cat(targets, 0), weights)
    rows = [weights[j:j + 1] if weights is not None and weights.dim() == 2 else weights for j in range(len(inputs))]
    return sum(weighted_mse(run_block(block, i), t, w) for i, t, w in zip(inputs, targets, rows)) / len(inputs)


@torch.no_grad()
def _input_absmax(block, names, inputs: list[BlockInput], batch: int) -> dict:
    """Per-channel max |x| of each named linear's input over all calibration samples (``batch`` samples per
    forward when their calls stack, :func:`.block_loop.block_batches`)."""
    out, handles = {}, []
    for name in names:
        def hook(mod, args, name=name):
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            out[name] = torch.maximum(out[name], m) if name in out else m
        handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for inp in block_batches(inputs, batch):
            run_block(block, inp)
    finally:
        for h in handles:
            h.remove()
    return out


def _cosine(step: int, total: int, floor: float = 1e-3) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def fit_block(block: nn.Module, block_path: str, inputs: list[BlockInput], targets: list[torch.Tensor],
              weights: torch.Tensor | None, config, adapter: ModelAdapter) -> dict:
    """Calibrate and pack one block in place (see the module docstring); returns the number of sites, their
    input widths (``site_widths``), the number of optimizer steps, the mean weighted loss of each epoch
    (fake-quantized block, before packing) and the optimization loop's wall time in seconds
    (``fit_seconds``). Each optimizer step runs the block once on its whole batch of samples (one forward and
    one backward; per sample only when the captured calls do not stack); each site's transformed,
    fake-quantized weights are built once per step, for all its linears together, and applied in one matmul
    (:meth:`SiteParams.member_output`). ``weights``: ``[L]`` position weights for every sample, ``[len(inputs),
    L]`` one row per sample (per-state weights), or ``None`` (uniform); ``ValueError`` for another row count."""
    if weights is not None and weights.dim() == 2 and weights.shape[0] != len(inputs):
        raise ValueError(f"fit_block: {weights.shape[0]} rows of per-state weights for {len(inputs)} calibration "
                         "states")
    dtype = next(block.parameters()).dtype
    block.float()
    inputs = [BlockInput(tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in i.args),
                         {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                          for k, v in i.kwargs.items()}) for i in inputs]
    targets = [t.float() for t in targets]
    sites = discover_sites(block, block_path, config.modules_to_not_convert, inputs[0])
    generator = torch.Generator().manual_seed(config.seed * 7919 + zlib.crc32(block_path.encode()))
    batch = max(1, config.batch_size)
    x_absmax = _input_absmax(block, [s.names[0] for s in sites], inputs, batch)
    linears = {name: block.get_submodule(name) for s in sites for name in s.names}
    device = next(block.parameters()).device
    params, wrappers = [], {}
    for site in sites:
        w_absmax = torch.stack([linears[n].weight.detach().abs().amax(0).float() for n in site.names]).amax(0)
        sp = SiteParams(site.in_features, x_absmax[site.names[0]].cpu(), w_absmax.cpu(), config, generator).to(device)
        params.append(sp)
        for name in site.names:
            wrappers[name] = FitLinear(linears[name], sp, config).to(device)
    for p in block.parameters():
        p.requires_grad_(False)
    for name, wrapper in wrappers.items():
        set_submodule(block, name, wrapper)
    transform_params = [p for sp in params for p in (sp.left, sp.right, sp.diag) if p is not None]
    clip_params = [sp.lac for sp in params if sp.lac.requires_grad] + \
                  [w.lwc for w in wrappers.values() if w.lwc.requires_grad]
    groups = [{"params": transform_params, "lr": config.lr}]
    if clip_params:
        groups.append({"params": clip_params, "lr": config.clip_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0, fused=device.type in ("cpu", "cuda"))
    base = [g["lr"] for g in opt.param_groups]
    per_epoch = math.ceil(len(inputs) / batch)
    total = config.epochs * per_epoch
    order_gen = torch.Generator().manual_seed(config.seed)
    epoch_losses = []
    step = 0
    start_time = time.perf_counter()
    with torch.enable_grad():
        for _ in range(config.epochs):
            epoch_sum = 0.0
            order = torch.randperm(len(inputs), generator=order_gen).tolist()
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                cpu_threads.rebalance()
                invert_factors_together(params)
                step_weights = weights[idx] if weights is not None and weights.dim() == 2 else weights
                loss = _batched_loss(block, [inputs[i] for i in idx], [targets[i] for i in idx], step_weights)
                for sp in params:
                    sp.new_step()
                opt.zero_grad(set_to_none=True)
                (loss / loss.detach().clamp_min(1e-30)).backward()
                opt.step()
                step += 1
                for g, lr in zip(opt.param_groups, base):
                    g["lr"] = lr * _cosine(step, total)
                epoch_sum += float(loss.detach()) * len(idx)
            epoch_losses.append(epoch_sum / len(inputs))
    fit_seconds = time.perf_counter() - start_time
    _fold_and_pack(block, sites, params, wrappers, adapter, keep_target=config.weight_rounding == "gptq",
                   module_cls=config.precision.packed_module())
    block.to(dtype)
    return {"sites": len(sites), "site_widths": [s.in_features for s in sites], "steps": step,
            "epoch_losses": epoch_losses, "fit_seconds": fit_seconds}


@torch.no_grad()
def _fold_and_pack(block, sites: list[Site], params, wrappers, adapter: ModelAdapter, keep_target: bool = False,
                   module_cls=None) -> None:
    converted = set(wrappers)
    rows_to_scale = []
    for site, sp in zip(sites, params):
        diag = sp.diag.detach().float() if sp.diag is not None else None
        fold = diag_fold_target(adapter, site.names[0], converted) if diag is not None else None
        for name in site.names:
            wrapper = wrappers[name]
            packed = pack_with_transform(wrapper.linear, sp.left.detach(), sp.right.detach(), diag,
                                         online_diag=diag is not None and fold is None,
                                         weight_clip=wrapper.weight_clip().detach(),
                                         input_clip=float(sp.input_clip()), keep_target=keep_target,
                                         **({} if module_cls is None else {"module_cls": module_cls}))
            set_submodule(block, name, packed)
        if fold is not None and fold[0] == "norm":
            norm = block.get_submodule(fold[1])
            norm.weight.mul_(diag.to(norm.weight))
        elif fold is not None:
            rows_to_scale.append((fold[1], diag))
    for up_name, diag in rows_to_scale:  # after every site is packed: scale the up-projection's output rows
        up = block.get_submodule(up_name)
        rows = up.weight_scale if hasattr(up, "weight_scale") else up.weight  # packed (exact) or float
        rows.mul_(diag[:, None].to(rows))
        scale_target_rows(up, diag)
        if up.bias is not None:
            up.bias.mul_(diag.to(up.bias))
