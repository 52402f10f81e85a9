"""Reference Dream-style masked-diffusion LM (remote code).

Module tree and state-dict names follow the real ``DreamModel`` (a Qwen2 body)::

    model.embed_tokens, model.layers[i].{input_layernorm, self_attn.{q_proj, k_proj, v_proj (with bias),
    o_proj, rotary_emb}, post_attention_layernorm, mlp.{gate_proj, up_proj, down_proj}}, model.norm, lm_head

Attention is bidirectional (``is_causal=False``). The logits are returned **unshifted**: the output at
position i−1 predicts token i, and applying that shift is the sampler's job, as with the real model. With a
2-D ``attention_mask`` containing zeros, pad keys are masked out and position ids are ``cumsum(mask) − 1``.
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_dream import DreamConfig
from .dllm_layers import (
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    bidirectional_attention,
    init_normal,
    key_padding_mask,
    padding_positions,
)


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, h, hkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.n_heads, self.n_kv_heads, self.head_dim = h, hkv, d // h
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, hkv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, hkv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(h * self.head_dim, d, bias=False)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(self, x, attention_mask, position_ids):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(position_ids)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return self.o_proj(bidirectional_attention(q, k, v, attention_mask))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, **kwargs):
        """``attention_mask``: boolean ``[B, 1, N, N]`` (True = may attend) or ``None``. Returns a 1-tuple."""
        b, n, _ = hidden_states.shape
        if position_ids is None:
            position_ids = torch.arange(n, device=hidden_states.device).expand(b, n)
        h = hidden_states + self.self_attn(self.input_layernorm(hidden_states), attention_mask, position_ids)
        h = h + self.mlp(self.post_attention_layernorm(h))
        return (h,)


class DreamBaseModel(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                output_hidden_states=False):
        x = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
        b, n = x.shape[:2]
        mask = key_padding_mask(attention_mask, n, x.device)
        if position_ids is None:
            position_ids = padding_positions(attention_mask if mask is not None and attention_mask.dim() == 2
                                             else None, b, n, x.device)
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_ids=position_ids)[0]
            if output_hidden_states:
                hidden.append(x)
        return self.norm(x), (tuple(hidden) if output_hidden_states else None)


class DreamModel(PreTrainedModel):
    """Dream-style masked-diffusion LM; ``forward`` returns fp32, unshifted logits ``[B, N, vocab]``."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    supports_gradient_checkpointing = False

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        init_normal(module, self.config.initializer_range)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                output_hidden_states=None, return_dict=True, **kwargs):
        x, hidden = self.model(input_ids, attention_mask, position_ids, inputs_embeds, bool(output_hidden_states))
        logits = self.lm_head(x).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden)
        return out if return_dict else out.to_tuple()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value
