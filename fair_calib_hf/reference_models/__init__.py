"""Reference dLLM architectures owned by the project: a LLaDA-style and a Dream-style model whose config
keys, module trees and state-dict names follow the real checkpoints, shipped as remote code so they load
through ``AutoModel.from_pretrained(path, trust_remote_code=True)`` exactly like the real ones.
"""
from __future__ import annotations

import inspect
import os
import shutil

import torch

from .configuration_dream import DreamConfig
from .configuration_llada import LLaDAConfig
from .modeling_dream import DreamModel
from .modeling_llada import LLaDAModelLM
from .tokenizer import build_tokenizer

SUPPORTED_KINDS = ("llada", "dream")

TINY_CONFIGS = {
    # Non-power-of-two widths on purpose (Dream: 96 and 224), so transforms are exercised on odd sizes.
    # init std 0.1 (not 0.02) so that a random model's hidden states and logits vary meaningfully.
    "llada": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=192, vocab_size=104,
                  embedding_size=104, max_sequence_length=512, init_std=0.1),
    "dream": dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, intermediate_size=224,
                  num_hidden_layers=2, vocab_size=104, max_position_embeddings=512, initializer_range=0.1),
}

_FAMILIES = {
    "llada": (LLaDAConfig, LLaDAModelLM, "configuration_llada", "modeling_llada"),
    "dream": (DreamConfig, DreamModel, "configuration_dream", "modeling_dream"),
}
_REMOTE_CODE_SHARED = "dllm_layers"


def _check_kind(kind: str) -> None:
    if kind not in SUPPORTED_KINDS:
        raise ValueError(f"unknown reference model kind {kind!r}; allowed: {', '.join(SUPPORTED_KINDS)}")


def tiny_config(kind: str, **overrides):
    """The tiny config of ``kind`` with ``overrides`` applied; token ids match :func:`build_tokenizer`."""
    _check_kind(kind)
    config_cls, model_cls, config_module, model_module = _FAMILIES[kind]
    allowed = set(inspect.signature(config_cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} config keys {unknown}; allowed: {', '.join(sorted(allowed))}")
    tok = build_tokenizer(kind)
    ids = dict(mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id)
    config = config_cls(**{**TINY_CONFIGS[kind], **ids, **overrides})
    config.auto_map = {
        "AutoConfig": f"{config_module}.{config_cls.__name__}",
        "AutoModel": f"{model_module}.{model_cls.__name__}",
        "AutoModelForCausalLM": f"{model_module}.{model_cls.__name__}",
    }
    config.architectures = [model_cls.__name__]
    return config


def save_tiny(kind: str, path: str, seed: int = 0, **config_overrides) -> str:
    """Write a tiny randomly initialised ``kind`` checkpoint (weights, config with ``auto_map``, remote code,
    tokenizer) to ``path``; the same seed gives bit-identical weights. Returns ``path``."""
    config = tiny_config(kind, **config_overrides)
    _, model_cls, config_module, model_module = _FAMILIES[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.save_pretrained(path)
    here = os.path.dirname(os.path.abspath(__file__))
    for module in (config_module, model_module, _REMOTE_CODE_SHARED):
        shutil.copyfile(os.path.join(here, f"{module}.py"), os.path.join(path, f"{module}.py"))
    build_tokenizer(kind).save_pretrained(path)
    return str(path)


__all__ = ["SUPPORTED_KINDS", "TINY_CONFIGS", "build_tokenizer", "save_tiny", "tiny_config",
           "LLaDAConfig", "LLaDAModelLM", "DreamConfig", "DreamModel"]
