"""Reference Dream-style masked-diffusion LM (remote code, loaded with ``trust_remote_code=True``).

Module tree and state-dict names are those of the real ``DreamModel`` (a Qwen2 body)::

    DreamModel                                     base_model_prefix = "model"
    ├─ model: DreamBaseModel
    │  ├─ embed_tokens
    │  ├─ layers: ModuleList[num_hidden_layers] of DreamDecoderLayer
    │  │   ├─ input_layernorm                      → q/k/v
    │  │   ├─ self_attn: q_proj, k_proj, v_proj (with bias), o_proj (no bias),
    │  │   │             rotary_emb (non-persistent ``inv_freq`` buffer: not in the state dict)
    │  │   ├─ post_attention_layernorm             → gate/up
    │  │   └─ mlp: gate_proj, up_proj, down_proj (no bias)
    │  └─ norm
    └─ lm_head                                     untied

Semantics:

* Attention is **bidirectional** (``is_causal=False``); grouped KV heads (query head j reads KV head
  ``j // (num_attention_heads / num_key_value_heads)``).
* RMSNorm is computed in fp32 and cast back; RoPE (rotate-half) in fp32 with ``theta = config.rope_theta``.
* The logits are returned in fp32 and are **NOT shifted** inside the model: as with the real Dream, the output
  at position i−1 predicts token i, and applying that shift is the sampler's job.
* ``forward`` returns a ``transformers.modeling_outputs.MaskedLMOutput`` (what the real ``DreamModel`` returns).
* Padding: a 2-D ``attention_mask [B, N]`` (1 = real token, 0 = pad) containing zeros becomes a boolean
  ``[B, 1, N, N]`` mask over the real keys (a pad query also sees itself, so no row is empty), and, unless
  ``position_ids`` are given, the positions are ``cumsum(mask) − 1`` (pads clamped to 0) — what the real
  Dream sampler builds. A mask of all ones is identical to no mask. A 4-D mask (boolean: True = may
  attend, or additive float) is used as given.
* No KV cache: ``use_cache=True`` or ``past_key_values`` raise.
* Generation config, as the real remote code does it: ``DreamGenerationConfig`` and ``DreamGenerationMixin``
  live in the sibling module ``generation_utils.py``, which this file imports (the upstream file layout).
  ``DreamModel`` inherits ``DreamGenerationMixin`` (transformers' ``can_generate()`` is true for any base class
  whose name contains ``GenerationMixin``, so ``save_pretrained`` writes ``generation_config.json``), and
  ``from_pretrained`` is overridden to replace ``model.generation_config`` by a ``DreamGenerationConfig`` read
  from the checkpoint folder (a missing ``generation_config.json`` raises ``OSError``).
  ``DreamGenerationConfig.validate(self, is_init=False)`` takes no ``strict`` argument, so transformers'
  ``GenerationConfig.save_pretrained`` (which calls ``validate(strict=...)``) raises ``TypeError`` on it: a
  Dream model loaded this way cannot be saved by plain transformers (4.57 and 5.x). The sampler itself (the
  real mixin's ``diffusion_generate``) is not reproduced; the
  package's :func:`fair_calib_hf.decoding.diffusion_generate` is the sampler.

This file may import only torch, transformers, the standard library and its sibling modules
(``configuration_dream.py``, ``generation_utils.py``).
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_dream import DreamConfig
from .generation_utils import DreamGenerationConfig, DreamGenerationMixin


class DreamRMSNorm(nn.Module):
    """``weight · x / sqrt(mean(x²) + eps)``; the normalisation runs in fp32, the result in the input dtype."""

    def __init__(self, size, eps=1e-6):
        super().__init__()
        self.variance_epsilon = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, hidden_states):
        x32 = hidden_states.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x32.to(hidden_states.dtype)


class DreamRotaryEmbedding(nn.Module):
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


def apply_rotary(x, cos, sin):
    """Rotate ``x [B, H, N, D]`` by ``cos``/``sin [B, N, D]`` in fp32; the result has ``x``'s dtype."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


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


class DreamAttention(nn.Module):
    def __init__(self, config, layer_idx=None):
        super().__init__()
        d, h, hkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        if d % h or h % hkv:
            raise ValueError(f"hidden_size ({d}) must be divisible by num_attention_heads ({h}) and that by "
                             f"num_key_value_heads ({hkv})")
        self.layer_idx = layer_idx
        self.num_heads, self.num_key_value_heads, self.head_dim = h, hkv, d // h
        self.attention_dropout = float(config.attention_dropout)
        self.is_causal = False
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, hkv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, hkv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(h * self.head_dim, d, bias=False)
        self.rotary_emb = DreamRotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, position_embeddings=None, **kwargs):
        b, n, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(b, n, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, n, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        if position_embeddings is None:
            if position_ids is None:
                position_ids = torch.arange(n, device=hidden_states.device).expand(b, n)
            position_embeddings = self.rotary_emb(position_ids)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        groups = self.num_heads // self.num_key_value_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        mask = attention_mask
        if mask is not None and mask.dtype != torch.bool:
            if mask.is_floating_point():  # additive; keep it finite
                mask = mask.to(q.dtype).clamp(min=torch.finfo(q.dtype).min)
            else:
                mask = mask.bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class DreamMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    """One Dream (Qwen2) decoder layer. ``forward(hidden_states, attention_mask=None, position_ids=None, ...)``
    returns ``(hidden_states,)``.

    Everything the layer needs comes in as arguments (no state is stashed on the module), so a layer can be re-run
    on its own with the positional and keyword arguments captured by a forward pre-hook.
    """

    def __init__(self, config, layer_idx):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = DreamAttention(config, layer_idx)
        self.mlp = DreamMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, position_embeddings=None, **kwargs):
        """``hidden_states [B, N, hidden]``; ``attention_mask``: ``[B or 1, 1, N, N]`` boolean (True = may attend) or
        additive float, or ``None`` (full bidirectional attention); ``position_ids [B, N]`` (default ``0 .. N-1``)."""
        if past_key_value is not None or use_cache:
            raise ValueError("the reference Dream model has no KV cache")
        h = self.self_attn(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                           position_ids=position_ids, position_embeddings=position_embeddings)
        hidden_states = hidden_states + h
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return (hidden_states,)


class DreamBaseModel(nn.Module):
    """The Dream body: ``embed_tokens``, ``layers``, ``norm``."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                output_hidden_states=False):
        """Returns ``(norm(last hidden state), hidden states or None)``; ``hidden_states`` (when asked) is
        ``(embeddings, layer 0 output, ..., layer L-2 output, norm(last layer output))``, the Qwen2 convention."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, n = x.shape[:2]
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask.to(x.device)
        else:
            mask = padding_attention_mask(attention_mask, n, x.device)
            if position_ids is None:
                position_ids = padding_position_ids(attention_mask if mask is not None else None, b, n, x.device)
        if position_ids is None:
            position_ids = torch.arange(n, device=x.device).expand(b, n)
        position_ids = position_ids.to(x.device)
        hidden = []
        for layer in self.layers:
            if output_hidden_states:
                hidden.append(x)
            x = layer(x, attention_mask=mask, position_ids=position_ids)[0]
        x = self.norm(x)
        if output_hidden_states:
            hidden.append(x)
        return x, (tuple(hidden) if output_hidden_states else None)


class DreamModel(DreamGenerationMixin, PreTrainedModel):
    """Dream-style masked-diffusion LM. ``forward`` returns a ``MaskedLMOutput`` whose ``logits [B, N, vocab]`` are
    fp32 and **unshifted** (the output at i−1 predicts token i; the sampler applies the shift)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DreamDecoderLayer"]
    _tied_weights_keys = None  # lm_head is never tied (tie_word_embeddings is false)
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then ``model.generation_config`` replaced by the checkpoint's
        ``DreamGenerationConfig`` (what the real ``DreamModel.from_pretrained`` does)."""
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        hub = {k: kwargs[k] for k in ("cache_dir", "force_download", "proxies", "local_files_only", "token",
                                      "revision", "subfolder") if k in kwargs}
        model.generation_config = DreamGenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        return model

    @torch.no_grad()
    def _init_weights(self, module):
        """normal(0, initializer_range) for linear and embedding weights, zero biases, unit norm weights, RoPE
        frequencies."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, DreamRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, DreamRotaryEmbedding):
            module.reset_parameters()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        """``input_ids [B, N]`` (or ``inputs_embeds``); ``attention_mask``: 2-D padding mask (1 = real, 0 = pad) or a
        4-D ``[B or 1, 1, N, N]`` mask; ``position_ids [B, N]``. ``labels`` gives a plain cross-entropy over all
        positions of the unshifted logits (-100 ignored)."""
        if use_cache or past_key_values is not None:
            raise ValueError("the reference Dream model has no KV cache (use_cache must be False)")
        if output_attentions:
            raise ValueError("output_attentions is not supported by the reference Dream model")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        x, hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, output_hidden_states=bool(output_hidden_states))
        logits = self.lm_head(x).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                                   ignore_index=-100)
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden)
        if return_dict is False:
            return out.to_tuple()
        return out

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value
