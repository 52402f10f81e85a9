"""Configuration of the reference Dream-style masked-diffusion LM (remote code; ``model_type "Dream"``).

The key names are the Qwen2 names of the real ``Dream-org/Dream-v0-*`` ``DreamConfig``; the defaults are the
Dream-v0-7B checkpoint values (not the real class defaults, which differ from the checkpoint). Only the
variant the checkpoints use is implemented: SiLU MLP, default RoPE (no ``rope_scaling``), untied ``lm_head``.

transformers 5.x turns ``rope_scaling`` into a property over ``rope_parameters`` (a standardised dict
``{"rope_type": "default", "rope_theta": ...}``), exactly as it does for the real remote config. The model
only reads ``rope_theta``; a ``rope_scaling``/``rope_parameters`` of any type other than ``"default"``, or one
whose ``rope_theta`` disagrees with ``rope_theta``, is rejected.

This file is shipped next to the weights and loaded with ``trust_remote_code=True``: it may import only the
standard library and ``transformers``.
"""
import warnings

from transformers import PretrainedConfig


class DreamConfig(PretrainedConfig):
    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=131072,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=False,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rope_scaling=None,
        attention_dropout=0.0,
        mask_token_id=151666,
        pad_token_id=151643,
        bos_token_id=151643,
        eos_token_id=151643,
        **kwargs,
    ):
        if hidden_act != "silu":
            raise ValueError(f"the reference Dream model implements hidden_act='silu' only, got {hidden_act!r}")
        if tie_word_embeddings:
            raise ValueError("the reference Dream model has an untied lm_head (tie_word_embeddings=False)")
        _check_default_rope(rope_scaling, rope_theta, "rope_scaling")
        _check_default_rope(kwargs.get("rope_parameters"), rope_theta, "rope_parameters")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        with warnings.catch_warnings():
            # transformers 5.x: `rope_scaling` is a deprecated alias of `rope_parameters` and its setter warns
            # (FutureWarning) on every config construction; on 4.x this is a plain attribute.
            warnings.simplefilter("ignore", FutureWarning)
            self.rope_scaling = rope_scaling
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        super().__init__(tie_word_embeddings=False, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, **kwargs)


def _check_default_rope(params, rope_theta, name):
    """Accept ``None`` or a default-RoPE dict (5.x stores ``{"rope_type": "default", "rope_theta": θ}``)."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise ValueError(f"{name} must be None or a dict, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", rope_theta)
    if rope_type != "default" or float(theta) != float(rope_theta) or set(params) - {"rope_type", "type", "rope_theta"}:
        raise ValueError(f"the reference Dream model implements default RoPE with rope_theta={rope_theta} only; "
                         f"got {name}={params!r}")
