"""Configuration of the reference LLaDA-style model: the key names and meanings of the real
``LLaDAConfig`` (``model_type "llada"``); defaults are the LLaDA-8B values."""
from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
    }

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int = 12288,
        mlp_ratio: int = 4,
        activation_type: str = "silu",
        block_type: str = "llama",
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        max_sequence_length: int = 4096,
        rope: bool = True,
        rope_theta: float = 500000.0,
        rope_full_precision: bool = True,
        layer_norm_type: str = "rms",
        rms_norm_eps: float = 1e-5,
        include_bias: bool = False,
        include_qkv_bias: bool = False,
        weight_tying: bool = False,
        scale_logits: bool = False,
        mask_token_id: int = 126336,
        eos_token_id: int = 126081,
        pad_token_id: int = 126081,
        bos_token_id: int = 126080,
        use_cache: bool = False,
        flash_attention: bool = False,
        init_std: float = 0.02,
        **kwargs,
    ):
        if block_type != "llama" or activation_type != "silu" or layer_norm_type != "rms" or not rope:
            raise ValueError("the reference LLaDA model implements block_type='llama', activation_type='silu', "
                             "layer_norm_type='rms', rope=True only")
        if weight_tying:
            raise ValueError("the reference LLaDA model has an untied head (weight_tying=False)")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads if n_kv_heads is not None else n_heads
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
        self.rms_norm_eps = rms_norm_eps
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.weight_tying = weight_tying
        self.scale_logits = scale_logits
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        self.flash_attention = flash_attention
        self.init_std = init_std
        kwargs["tie_word_embeddings"] = False
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id, **kwargs)
