"""Layers shared by the reference LLaDA-style and Dream-style models (remote code: torch only).

* ``RMSNorm``: ``y = w · x / sqrt(mean(x²) + eps)``, normalisation computed in fp32.
* RoPE (rotate-half convention), angles computed in fp32 from ``theta`` at call time (no buffers, so nothing
  can be left uninitialised by meta-device loading).
* Bidirectional SDPA with grouped KV heads and an optional key-padding mask.
"""
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding; ``forward(positions [B, N]) -> (cos, sin)`` of shape ``[B, N, head_dim]``, fp32."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, float(theta)

    def forward(self, positions: torch.Tensor):
        exponent = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponent)
        angles = positions.float()[..., None] * inv_freq
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, N, D]`` by the angles of ``cos``/``sin [B, N, D]`` (in fp32)."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def padding_positions(attention_mask, batch: int, length: int, device) -> torch.Tensor:
    """Position ids ``[B, N]``: ``cumsum(mask) - 1`` (pads clamped to 0) with a mask, else ``0..N-1``."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def key_padding_mask(attention_mask, length: int, device):
    """Boolean ``[B, 1, N, N]`` mask (True = may attend) from a 2-D ``[B, N]`` padding mask, or ``None``.

    Real queries attend to real keys only; pad queries also attend to themselves so no row is empty
    (their outputs are ignored). All ones, or no mask, gives ``None`` (full bidirectional attention).
    A 4-D mask is passed through as boolean.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        return attention_mask.bool()
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return keep[:, None, None, :] | eye


def bidirectional_attention(q, k, v, mask) -> torch.Tensor:
    """Non-causal SDPA over ``q [B, H, N, D]`` and grouped ``k, v [B, Hkv, N, D]``; returns ``[B, N, H·D]``."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def init_normal(module: nn.Module, std: float) -> None:
    """Reference init: normal(0, std) for Linear/Embedding weights, zero biases, unit norm weights."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
