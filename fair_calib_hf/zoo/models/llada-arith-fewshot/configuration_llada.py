"""Configuration of the reference LLaDA-style masked-diffusion LM (remote code; ``model_type "llada"``).

The key names and meanings are those of the real ``GSAI-ML/LLaDA-8B-*`` ``config.json`` (OLMo-derived);
the defaults are the LLaDA-8B checkpoint values. Only the variant the 8B checkpoints use is implemented
(``block_type "llama"``, SiLU-gated MLP, RMSNorm, RoPE, untied head); other values raise ``ValueError``.

Like the real config, ``hidden_size``, ``num_attention_heads`` and ``num_hidden_layers`` are aliases of
``d_model``, ``n_heads`` and ``n_layers``; no other Hugging Face names are aliased, so code that works on
this config also works on the real one.

This file is shipped next to the weights and loaded with ``trust_remote_code=True``: it may import only the
standard library and ``transformers``.
"""
from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
    }

    def __init__(
        self,
        d_model=4096,
        n_heads=32,
        n_kv_heads=None,
        n_layers=32,
        mlp_hidden_size=12288,
        mlp_ratio=4,
        activation_type="silu",
        block_type="llama",
        vocab_size=126464,
        embedding_size=126464,
        max_sequence_length=4096,
        rope=True,
        rope_theta=500000.0,
        rope_full_precision=True,
        layer_norm_type="rms",
        layer_norm_with_affine=True,
        rms_norm_eps=1e-5,
        include_bias=False,
        include_qkv_bias=False,
        weight_tying=False,
        scale_logits=False,
        alibi=False,
        attention_layer_norm=False,
        input_emb_norm=False,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        residual_dropout=0.0,
        mask_token_id=126336,
        eos_token_id=126081,
        pad_token_id=126081,
        bos_token_id=126080,
        use_cache=False,
        flash_attention=False,
        init_std=0.02,
        **kwargs,
    ):
        unsupported = {
            "block_type": (block_type, "llama"),
            "activation_type": (activation_type, "silu"),
            "layer_norm_type": (layer_norm_type, "rms"),
            "rope": (rope, True),
            "layer_norm_with_affine": (layer_norm_with_affine, True),
            "weight_tying": (weight_tying, False),
            "scale_logits": (scale_logits, False),
            "alibi": (alibi, False),
            "attention_layer_norm": (attention_layer_norm, False),
            "input_emb_norm": (input_emb_norm, False),
        }
        bad = {k: v for k, (v, ok) in unsupported.items() if v != ok}
        if bad:
            raise ValueError(f"the reference LLaDA model implements only "
                             f"{ {k: ok for k, (_, ok) in unsupported.items()} }; got {bad}")
        if embedding_size is not None and embedding_size < vocab_size:
            raise ValueError(f"embedding_size ({embedding_size}) must be >= vocab_size ({vocab_size})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.mlp_ratio = mlp_ratio
        self.activation_type = activation_type
        self.block_type = block_type
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.max_sequence_length = max_sequence_length
        self.rope = rope
        self.rope_theta = rope_theta
        self.rope_full_precision = rope_full_precision
        self.layer_norm_type = layer_norm_type
        self.layer_norm_with_affine = layer_norm_with_affine
        self.rms_norm_eps = rms_norm_eps
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.weight_tying = weight_tying
        self.scale_logits = scale_logits
        self.alibi = alibi
        self.attention_layer_norm = attention_layer_norm
        self.input_emb_norm = input_emb_norm
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.residual_dropout = residual_dropout
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        self.flash_attention = flash_attention
        self.init_std = init_std
        # The head is never tied to the embedding (``weight_tying`` is false). transformers 4.x defaults
        # ``tie_word_embeddings`` to True and would tie ``get_output_embeddings()`` to ``wte``: store False.
        kwargs["tie_word_embeddings"] = False
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id, **kwargs)

    @property
    def effective_embedding_size(self) -> int:
        """Rows of ``wte`` and of the head (``embedding_size``, or ``vocab_size`` when that is unset)."""
        return self.embedding_size if self.embedding_size is not None else self.vocab_size

    @property
    def effective_mlp_hidden_size(self) -> int:
        """MLP width (``mlp_hidden_size``, or ``mlp_ratio · d_model`` when that is unset)."""
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model
