"""Stage II: FlatQuant-style block-wise calibration with a position-weighted hidden-state loss.

Per site (see :mod:`.sites`) the learnable parameters are the Kronecker factors ``L [a, a]``, ``R [b, b]``
(sizes from :func:`.transforms.kronecker_factors`; initialised to a randomised Hadamard-type orthogonal pair,
random orthogonal for a size with no Hadamard matrix; inverted directly in fp32), the diagonal
``d [in]`` (SmoothQuant-style init ``d = w_max^{1−α} / x_max^α``, α = 0.3) and the activation clip logit
(LAC, one per site, ``σ(4) ≈ 0.982`` at init); per linear, one weight clip logit per output channel (LWC).
With ``lac=False`` / ``lwc=False`` that clip is not learned and is exactly ``a_clip_ratio`` / ``w_clip_ratio``
(default 1.0: no clipping), not the frozen ``σ(4)``. While training, every quantized linear computes

    x̃ = (x ⊙ d)·(L ⊗ R),   W̃ = (W ⊘ d)·(L ⊗ R)^{-T},   y = Q_tok(x̃; σ(lac)) · Q_ch(W̃; σ(lwc))ᵀ + b

with symmetric int4 fake quantization and straight-through rounding. The block is fitted in fp32 to

    loss = mean_{samples, positions i} w̄_i · mean_hidden (h_q(i) − h_fp(i))²

(``w̄ ≡ 1``: plain FlatQuant MSE), with AdamW (no weight decay) and a cosine schedule down to 1e-3 × lr,
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

from ..architectures import ModelAdapter
from ..packing import QMAX, QMIN
from ..targets import set_submodule
from .block_loop import BlockInput, block_batches, run_block, stack_block_inputs
from .sites import Site, diag_fold_target, discover_sites, pack_with_transform
from .transforms import kron_apply, kronecker_factors, orthogonal_hadamard_factors, transform_weight

CLIP_INIT = 4.0


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity gradient."""
    return (torch.round(x) - x).detach() + x


class _FakeQuantRows(torch.autograd.Function):
    """:func:`fake_quant_rows` as one autograd node. The forward is the same expression; the backward is the
    gradient autograd derives for it with :func:`ste_round` as the rounding, written out operation by
    operation in the same floating-point order (each node's formula from torch's ``derivatives.yaml``:
    ``abs``, ``amax`` (gradient shared evenly among tied maxima), ``mul``, ``div``, ``where``, ``clamp``
    (gradient where ``QMIN ≤ r ≤ QMAX``)), so gradients are bit-identical to the generic graph's while
    running about a third of its kernels and a single graph node."""

    @staticmethod
    def forward(ctx, x, clip):
        a = x.abs()
        m = a.amax(-1, keepdim=True)
        s0 = clip * m / QMAX
        zero = s0 == 0
        s = torch.where(zero, torch.ones_like(s0), s0)
        u = x / s
        # ste_round's forward value (round(u) − u) + u is exactly round(u) with -0 turned into +0
        r = torch.round(u) + 0.0
        c = torch.clamp(r, QMIN, QMAX)
        ctx.save_for_backward(x, clip, m, zero, s, u, r, c)
        return c * s

    @staticmethod
    def backward(ctx, g):
        x, clip, m, zero, s, u, r, c = ctx.saved_tensors
        need_x, need_clip = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gu = torch.where((r >= QMIN).logical_and_(r <= QMAX), g * s, 0.0)  # out = c·s, clamp, STE
        gs = (g * c).sum(-1, keepdim=True) + ((-gu) * (u / s)).sum(-1, keepdim=True)  # out = c·s; u = x/s
        gt1 = torch.where(zero, 0.0, gs) / QMAX  # s = where(s0 == 0, 1, s0); s0 = t1 / QMAX
        grad_clip = (gt1 * m).sum_to_size(clip.shape) if need_clip else None  # t1 = clip · m
        grad_x = None
        if need_x:
            hit = m == x.abs()  # amax: the gradient is shared evenly among the row's maxima
            ga = ((gt1 * clip) / hit.sum(-1, keepdim=True)) * hit
            grad_x = gu / s + ga * x.sgn()
        return grad_x, grad_clip


def fake_quant_rows(x: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """Symmetric int4 quantize-dequantize per row (last dim) with straight-through rounding:
    ``s = clip·max|x|/7`` (1 for zero rows), ``clamp(round(x/s), −8, 7)·s``. ``x [..., K]`` float; ``clip``
    a 0-dim tensor or one broadcastable to ``[..., 1]`` (e.g. ``[rows, 1]``); same dtype as ``x``. Gradients
    reach ``x`` (STE: through the rounding, zero where clamped, and through the scale's ``max|x|``) and
    ``clip``. One autograd node (:class:`_FakeQuantRows`), bit-identical to the plain expression with
    :func:`ste_round`."""
    return _FakeQuantRows.apply(x, clip)


def weighted_mse(h_q: torch.Tensor, h_fp: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``mean_{b,i} w_i · mean_d (h_q − h_fp)²`` for ``h [B, N, D]`` and ``weights [N]`` (None: all ones,
    which is exactly ``F.mse_loss``)."""
    per_pos = (h_q.float() - h_fp.float()).pow(2).mean(-1)
    if weights is None:
        return per_pos.mean()
    return (per_pos * weights.to(per_pos)[None, -per_pos.shape[1]:]).mean()


class SiteParams(nn.Module):
    """Learnable transform of one site."""

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
        self._cache = None
        self._inverse = None

    def input_clip(self) -> torch.Tensor:
        """The activation clip ratio: ``σ(lac)`` when learned, else exactly ``a_clip_ratio`` (1.0: none)."""
        if self.fixed_clip is not None:
            return torch.tensor(self.fixed_clip, device=self.lac.device)
        return torch.sigmoid(self.lac)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if self._cache is not None and self._cache[0] is x:
            return self._cache[1]
        xt = x.float() * self.diag if self.diag is not None else x.float()
        xq = fake_quant_rows(kron_apply(xt, self.left, self.right), self.input_clip())
        self._cache = (x, xq)
        return xq

    def inverse_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L⁻ᵀ, R⁻ᵀ)``, computed once per optimizer step and shared by the site's linears (cleared with the
        input cache after each step)."""
        if self._inverse is None:
            self._inverse = (torch.linalg.inv(self.left).t(), torch.linalg.inv(self.right).t())
        return self._inverse

    def transform_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``(W ⊘ d)·(L ⊗ R)^{-T}`` (:func:`.transforms.transform_weight`, with the step's cached inverses)."""
        return transform_weight(w.float(), self.left, self.right, self.diag, self.inverse_factors())


class FitLinear(nn.Module):
    """A target linear during Stage II: frozen float weight, the site's transform, its own LWC logits."""

    def __init__(self, linear: nn.Linear, site: SiteParams, config):
        super().__init__()
        self.linear, self.site = linear, site
        self.lwc = nn.Parameter(torch.full((linear.out_features, 1), CLIP_INIT), requires_grad=bool(config.lwc))
        self.fixed_clip = None if config.lwc else float(config.w_clip_ratio)

    def weight_clip(self) -> torch.Tensor:
        """Per-output-channel clip ratios ``[out, 1]``: ``σ(lwc)`` when learned, else exactly ``w_clip_ratio``
        (1.0: none)."""
        if self.fixed_clip is not None:
            return torch.full_like(self.lwc, self.fixed_clip)
        return torch.sigmoid(self.lwc)

    def forward(self, x):
        wq = fake_quant_rows(self.site.transform_weight(self.linear.weight), self.weight_clip())
        y = self.site.transform_input(x) @ wq.t()
        if self.linear.bias is not None:
            y = y + self.linear.bias.float()
        return y.to(x.dtype)


def _batched_loss(block, inputs: list[BlockInput], targets: list[torch.Tensor], weights) -> torch.Tensor:
    """Mean weighted MSE over the samples ``inputs`` (one forward for all of them when their calls stack,
    :func:`.block_loop.stack_block_inputs`; one per sample otherwise)."""
    stacked = stack_block_inputs(inputs)
    if stacked is not None:
        return weighted_mse(run_block(block, stacked), torch.cat(targets, 0), weights)
    return sum(weighted_mse(run_block(block, i), t, weights) for i, t in zip(inputs, targets)) / len(inputs)


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
    """Calibrate and pack one block in place (see the module docstring); returns the number of sites and
    optimizer steps, the mean weighted loss of each epoch (fake-quantized block, before packing) and the
    optimization loop's wall time in seconds (``fit_seconds``). Each optimizer step runs the block once on its
    whole batch of samples (one forward and one backward; per sample only when the captured calls do not
    stack), so every transformed, fake-quantized weight is built once per step."""
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
    opt = torch.optim.AdamW(groups, weight_decay=0.0, foreach=True)
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
                loss = _batched_loss(block, [inputs[i] for i in idx], [targets[i] for i in idx], weights)
                for sp in params:
                    sp._cache = sp._inverse = None
                opt.zero_grad(set_to_none=True)
                (loss / loss.detach().clamp_min(1e-30)).backward()
                opt.step()
                step += 1
                for g, lr in zip(opt.param_groups, base):
                    g["lr"] = lr * _cosine(step, total)
                epoch_sum += float(loss.detach()) * len(idx)
            epoch_losses.append(epoch_sum / len(inputs))
    fit_seconds = time.perf_counter() - start_time
    _fold_and_pack(block, sites, params, wrappers, adapter)
    block.to(dtype)
    return {"sites": len(sites), "steps": step, "epoch_losses": epoch_losses, "fit_seconds": fit_seconds}


@torch.no_grad()
def _fold_and_pack(block, sites: list[Site], params, wrappers, adapter: ModelAdapter) -> None:
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
                                         input_clip=float(sp.input_clip()))
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
        if up.bias is not None:
            up.bias.mul_(diag.to(up.bias))
