"""Reference LLaDA-style masked-diffusion LM (remote code, loaded with ``trust_remote_code=True``).

Module tree and state-dict names are those of the real ``LLaDAModelLM`` with ``block_type "llama"``::

    LLaDAModelLM                                   base_model_prefix = "model"
    └─ model: LLaDAModel
       └─ transformer: ModuleDict
          ├─ wte          Embedding(embedding_size, d_model)
          ├─ emb_drop     Dropout(embedding_dropout)
          ├─ blocks       ModuleList[n_layers] of LLaDALlamaBlock
          │   attn_norm → q_proj, k_proj, v_proj;  attn_out;  ff_norm → ff_proj (gate), up_proj;  ff_out (down);
          │   rotary_emb (non-persistent ``inv_freq`` buffer: not in the state dict)
          ├─ ln_f         RMSNorm
          └─ ff_out       Linear(d_model, embedding_size)   the LM head (same leaf name as each block's down-proj)

Semantics:

* Block: ``h = x + attn_out(SDPA(rope(q), rope(k), v))`` with q/k/v from ``attn_norm(x)``, then
  ``h + ff_out(silu(ff_proj(n)) * up_proj(n))`` with ``n = ff_norm(h)``. Attention is **bidirectional**: there
  is no causal mask anywhere.
* RMSNorm is computed in fp32 and cast back; RoPE (rotate-half) is computed in fp32 when
  ``rope_full_precision`` (the 8B default), with ``theta = config.rope_theta``.
* The logits are **not shifted**: the output at position i predicts token i. They are returned in fp32.
* Padding (left padding): a 2-D ``attention_mask [B, N]`` (1 = real token, 0 = pad) masks the pad keys out,
  and the RoPE positions count real tokens only (``cumsum(mask) - 1``), so a left-padded row gives the same
  logits on its real tokens as the same sequence alone. A mask of all ones is identical to no mask. (The real
  remote code of the 8B checkpoints starts positions at 0 on every row; with a padding mask this model
  instead matches what the unpadded sequence would see.)
* No KV cache: ``use_cache=True`` or ``past_key_values`` raise, as in the real model.

This file may import only torch, transformers, the standard library and its sibling configuration file.
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig


class RMSLayerNorm(nn.Module):
    """``weight · x / sqrt(mean(x²) + eps)``; the normalisation runs in fp32, the result in the input dtype."""

    def __init__(self, size, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE. ``inv_freq`` is a non-persistent fp32 buffer (never saved).

    ``forward(position_ids [B, N])`` returns ``(cos, sin)`` of shape ``[B, N, head_dim]`` in fp32. If the module was
    cast to a low precision (``model.to(torch.bfloat16)``), the frequencies are recomputed in fp32 on the fly.
    """

    def __init__(self, head_dim, theta):
        super().__init__()
        self.head_dim = head_dim
        self.theta = float(theta)
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device=None):
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / (self.theta ** exponent)

    def reset_parameters(self):
        self.inv_freq = self.compute_inv_freq(self.inv_freq.device)

    def forward(self, position_ids):
        inv_freq = self.inv_freq
        if inv_freq.dtype != torch.float32:
            inv_freq = self.compute_inv_freq(position_ids.device)
        angles = position_ids.to(device=inv_freq.device, dtype=torch.float32)[..., None] * inv_freq
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x, cos, sin, full_precision=True):
    """Rotate ``x [B, H, N, D]`` by ``cos``/``sin [B, N, D]``; in fp32 if ``full_precision``, else in ``x``'s dtype."""
    work = x.float() if full_precision else x
    cos, sin = cos[:, None].to(work.dtype), sin[:, None].to(work.dtype)
    half = work.shape[-1] // 2
    rotated = torch.cat((-work[..., half:], work[..., :half]), dim=-1)
    return (work * cos + rotated * sin).to(x.dtype)


def padding_attention_mask(attention_mask, length, device):
    """A boolean ``[B, 1, N, N]`` mask (True = may attend) for a 2-D padding mask ``[B, N]``, or ``None``.

    Real queries see the real keys only. A pad query also sees itself, so that no softmax row is empty (no NaN);
    pad outputs are meaningless and ignored. All ones gives ``None`` (plain bidirectional attention).
    """
    if attention_mask is None:
        return None
    keep = attention_mask.to(device=device).bool()
    if bool(keep.all()):
        return None
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return keep[:, None, None, :] | eye


def padding_position_ids(attention_mask, batch, length, device):
    """``cumsum(mask) - 1`` (pads clamped to 0) for a 2-D padding mask, else ``0 .. N-1`` on every row."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (attention_mask.to(device=device).long().cumsum(-1) - 1).clamp(min=0)


def merge_attention_masks(a, b):
    """Merge two attention masks, each ``None``, boolean/integer (nonzero = may attend) or additive float."""
    a = a if a is None or a.dtype == torch.bool or a.is_floating_point() else a.bool()
    b = b if b is None or b.dtype == torch.bool or b.is_floating_point() else b.bool()
    if a is None or b is None:
        return b if a is None else a
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    if a.dtype == torch.bool:
        a, b = b, a
    if b.dtype == torch.bool:
        return a.masked_fill(~b, torch.finfo(a.dtype).min)
    return a + b


class LLaDALlamaBlock(nn.Module):
    """One LLaDA "llama" block. ``forward(x, attention_bias=None, position_ids=None, ...)`` returns ``(x, None)``.

    Everything the block needs comes in as arguments (no state is stashed on the module), so a block can be re-run
    on its own with the positional and keyword arguments captured by a forward pre-hook.
    """

    def __init__(self, layer_id, config):
        super().__init__()
        d, h, hkv = config.d_model, config.n_heads, config.n_kv_heads
        if d % h or h % hkv:
            raise ValueError(f"d_model ({d}) must be divisible by n_heads ({h}) and n_heads by n_kv_heads ({hkv})")
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = h, hkv, d // h
        self.rope_full_precision = bool(config.rope_full_precision)
        self.attention_dropout = float(config.attention_dropout)
        self.residual_dropout = float(config.residual_dropout)
        hidden = config.effective_mlp_hidden_size
        qkv_bias = bool(config.include_bias or config.include_qkv_bias)
        self.attn_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, hkv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, hkv * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.up_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.ff_out = nn.Linear(hidden, d, bias=config.include_bias)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.rope_theta)

    def attention(self, x, attention_bias, position_ids):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(position_ids)
        q = apply_rotary(q, cos, sin, self.rope_full_precision)
        k = apply_rotary(k, cos, sin, self.rope_full_precision)
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:  # grouped KV heads: query head j reads KV head j // groups
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if attention_bias is not None and attention_bias.dtype != torch.bool:  # additive; keep it finite
            attention_bias = attention_bias.to(q.dtype).clamp(min=torch.finfo(q.dtype).min)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias, is_causal=False,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        return self.attn_out(out.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim))

    def forward(self, x, attention_bias=None, position_ids=None, layer_past=None, use_cache=False, **kwargs):
        """``x [B, N, d_model]``; ``attention_bias``: ``[B or 1, 1, N, N]``, boolean (True = may attend) or additive
        float, or ``None`` (full bidirectional attention); ``position_ids [B, N]`` (default ``0 .. N-1``)."""
        if layer_past is not None or use_cache:
            raise ValueError("the reference LLaDA model has no KV cache")
        b, n, _ = x.shape
        if position_ids is None:
            position_ids = torch.arange(n, device=x.device).expand(b, n)
        h = self.attention(self.attn_norm(x), attention_bias, position_ids)
        x = x + F.dropout(h, self.residual_dropout, self.training)
        m = self.ff_norm(x)
        h = self.ff_out(F.silu(self.ff_proj(m)) * self.up_proj(m))
        x = x + F.dropout(h, self.residual_dropout, self.training)
        return x, None


class LLaDAModel(nn.Module):
    """The LLaDA body: embedding, blocks, final norm and the head ``transformer.ff_out``."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        vocab = config.effective_embedding_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, config.d_model),
                emb_drop=nn.Dropout(config.embedding_dropout),
                blocks=nn.ModuleList(LLaDALlamaBlock(i, config) for i in range(config.n_layers)),
                ln_f=RMSLayerNorm(config.d_model, config.rms_norm_eps),
                ff_out=nn.Linear(config.d_model, vocab, bias=False),
            )
        )

    def forward(self, input_ids=None, input_embeddings=None, attention_mask=None, attention_bias=None,
                position_ids=None, output_hidden_states=False):
        """Returns ``(logits [B, N, embedding_size] in the model dtype, hidden states or None)``.

        ``hidden_states`` (when asked) is ``(embeddings, block 0 output, ..., block L-2 output, ln_f(last block
        output))``, the OLMo/LLaDA convention."""
        if (input_ids is None) == (input_embeddings is None):
            raise ValueError("pass exactly one of input_ids and input_embeddings")
        t = self.transformer
        x = t.wte(input_ids) if input_embeddings is None else input_embeddings
        x = t.emb_drop(x)
        b, n = x.shape[:2]
        if attention_mask is not None and attention_mask.dim() == 4:  # a ready [B, 1, N, N] mask
            attention_bias = merge_attention_masks(attention_mask.to(x.device), attention_bias)
            attention_mask = None
        mask = padding_attention_mask(attention_mask, n, x.device)
        if attention_bias is not None:
            attention_bias = attention_bias.to(x.device)
        bias = merge_attention_masks(mask, attention_bias)
        if position_ids is None:
            position_ids = padding_position_ids(attention_mask if mask is not None else None, b, n, x.device)
        hidden = []
        for block in t.blocks:
            if output_hidden_states:
                hidden.append(x)
            x, _ = block(x, attention_bias=bias, position_ids=position_ids)
        x = t.ln_f(x)
        if output_hidden_states:
            hidden.append(x)
        return t.ff_out(x), (tuple(hidden) if output_hidden_states else None)


class LLaDAModelLM(PreTrainedModel):
    """LLaDA-style masked-diffusion LM. ``forward`` returns a ``CausalLMOutputWithPast`` whose ``logits
    [B, N, embedding_size]`` are fp32 and unshifted (output i predicts token i)."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDALlamaBlock"]
    _tied_weights_keys = None  # the head is never tied (weight_tying is false)
    supports_gradient_checkpointing = False

    def __init__(self, config, model=None, init_params=False):
        super().__init__(config)
        self.model = model if model is not None else LLaDAModel(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """normal(0, init_std) for linear and embedding weights, zero biases, unit norm weights, RoPE frequencies."""
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSLayerNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, RotaryEmbedding):
            module.reset_parameters()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, input_embeddings=None, position_ids=None, **kwargs):
        """``input_ids [B, N]`` (or ``inputs_embeds``/``input_embeddings [B, N, d_model]``);
        ``attention_mask [B, N]``: 1 = real token, 0 = (left) pad; ``attention_bias [B or 1, 1, N, N]``:
        boolean (True = may attend) or additive float. ``labels`` gives a plain cross-entropy over all
        positions (no shift; -100 ignored)."""
        if use_cache or past_key_values is not None:
            raise ValueError("the reference LLaDA model has no KV cache (use_cache must be False)")
        if output_attentions:
            raise ValueError("output_attentions is not supported by the reference LLaDA model")
        if input_embeddings is None:
            input_embeddings = inputs_embeds
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        logits, hidden = self.model(input_ids=input_ids, input_embeddings=input_embeddings,
                                    attention_mask=attention_mask, attention_bias=attention_bias,
                                    position_ids=position_ids, output_hidden_states=bool(output_hidden_states))
        logits = logits.float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                                   ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden)
        if return_dict is False:
            return out.to_tuple()
        return out

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value):
        self.model.transformer.ff_out = value
