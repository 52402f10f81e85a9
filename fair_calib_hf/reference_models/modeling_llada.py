"""Reference LLaDA-style masked-diffusion LM (remote code).

Module tree and state-dict names follow the real ``LLaDAModelLM`` (``block_type "llama"``)::

    model.transformer.wte, .emb_drop, .blocks[i].{attn_norm, q_proj, k_proj, v_proj, attn_out,
                                                  ff_norm, ff_proj, up_proj, ff_out, rotary_emb},
    model.transformer.ln_f, model.transformer.ff_out (the LM head; same leaf name as each block's down-proj)

Block: ``h = x + attn_out(SDPA(rope(q), rope(k), v))`` over ``attn_norm(x)``, then
``h + ff_out(silu(ff_proj(n)) * up_proj(n))`` with ``n = ff_norm(h)``. Attention is bidirectional (no causal
mask). Logits are not shifted: the output at position i predicts token i. With a 2-D ``attention_mask``
(left padding), pad keys are masked out and RoPE positions start at the first real token.
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig
from .dllm_layers import (
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    bidirectional_attention,
    init_normal,
    key_padding_mask,
    padding_positions,
)


class LLaDALlamaBlock(nn.Module):
    def __init__(self, config: LLaDAConfig, layer_id: int):
        super().__init__()
        d, h, hkv = config.d_model, config.n_heads, config.n_kv_heads
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = h, hkv, d // h
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, hkv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, hkv * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=config.include_bias)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=config.include_bias)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=config.include_bias)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(self, x, attention_bias=None, position_ids=None, layer_past=None, use_cache=False):
        """``x [B, N, d]``; ``attention_bias``: boolean ``[B, 1, N, N]`` (True = may attend) or ``None``.
        Returns ``(x, None)`` like the real block (no KV cache)."""
        b, n, _ = x.shape
        if position_ids is None:
            position_ids = torch.arange(n, device=x.device).expand(b, n)
        a = self.attn_norm(x)
        q = self.q_proj(a).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(a).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(a).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(position_ids)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        x = x + self.attn_out(bidirectional_attention(q, k, v, attention_bias))
        m = self.ff_norm(x)
        x = x + self.ff_out(F.silu(self.ff_proj(m)) * self.up_proj(m))
        return x, None


class LLaDAModel(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        vocab = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, config.d_model),
                emb_drop=nn.Dropout(0.0),
                blocks=nn.ModuleList(LLaDALlamaBlock(config, i) for i in range(config.n_layers)),
                ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
                ff_out=nn.Linear(config.d_model, vocab, bias=False),
            )
        )

    def forward(self, input_ids=None, input_embeddings=None, attention_mask=None, output_hidden_states=False):
        t = self.transformer
        x = input_embeddings if input_embeddings is not None else t.wte(input_ids)
        x = t.emb_drop(x)
        b, n = x.shape[:2]
        bias = key_padding_mask(attention_mask, n, x.device)
        positions = padding_positions(attention_mask if attention_mask is not None and attention_mask.dim() == 2
                                      else None, b, n, x.device)
        hidden = [x] if output_hidden_states else None
        for block in t.blocks:
            x, _ = block(x, attention_bias=bias, position_ids=positions)
            if output_hidden_states:
                hidden.append(x)
        logits = t.ff_out(t.ln_f(x))
        return logits, (tuple(hidden) if output_hidden_states else None)


class LLaDAModelLM(PreTrainedModel):
    """LLaDA-style masked-diffusion LM; ``forward`` returns fp32 logits ``[B, N, embedding_size]``."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDALlamaBlock"]
    supports_gradient_checkpointing = False

    def __init__(self, config: LLaDAConfig, model: LLaDAModel | None = None, init_params: bool = False):
        super().__init__(config)
        self.model = model or LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module):
        init_normal(module, self.config.init_std)

    def forward(self, input_ids=None, input_embeddings=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=False, output_attentions=None,
                output_hidden_states=None, return_dict=True, **kwargs):
        if attention_bias is not None and attention_mask is None:
            attention_mask = attention_bias
        logits, hidden = self.model(input_ids, input_embeddings, attention_mask, bool(output_hidden_states))
        logits = logits.float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden)
        return out if return_dict else out.to_tuple()

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value):
        self.model.transformer.ff_out = value
