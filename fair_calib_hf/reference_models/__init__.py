"""Reference dLLM architectures: a LLaDA-style and a Dream-style masked-diffusion LM.

Their config keys, module trees and state-dict names are those of the real ``GSAI-ML/LLaDA-8B-*`` and
``Dream-org/Dream-v0-*`` checkpoints, and they ship as **remote code** in the upstream file layout:
:func:`save_tiny` copies ``llada/{configuration,modeling}_llada.py`` or ``dream/{configuration,modeling}_dream.py``
and ``dream/generation_utils.py`` (which ``modeling_dream.py`` imports) next to the weights, so a saved checkpoint
loads exactly like a real one::

    path = save_tiny("llada", "/tmp/tiny-llada", seed=0)
    model = AutoModel.from_pretrained(path, trust_remote_code=True)       # or AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(path)

The classes re-exported here (``LLaDAConfig``, ``LLaDAModelLM``, ``DreamConfig``, ``DreamModel``) are the
package's own copies, handy for building a model in memory; a checkpoint loaded through ``trust_remote_code``
uses the classes of the copied files (``type(model).__module__`` starts with ``transformers_modules``).

Tiny defaults (:data:`TINY_CONFIGS`): fast on CPU, with non-power-of-two widths (LLaDA MLP 192 = 3·64; Dream
hidden 96, MLP 224) so that transforms are exercised on the same kind of sizes as the real models (12288 = 3·4096,
3584 = 28·128, 18944 = 148·128). The random init std is 0.1 rather than the real 0.02: with 0.02 a tiny random
model's logits are almost constant (std ≈ 0.15, near-uniform softmax); with 0.1 they vary meaningfully
(std ≈ 0.8) and argmax decisions differ from position to position.
"""
from __future__ import annotations

import inspect
import os
import shutil

import torch

from .dream.configuration_dream import DreamConfig
from .dream.modeling_dream import DreamModel
from .llada.configuration_llada import LLaDAConfig
from .llada.modeling_llada import LLaDAModelLM
from .tokenizer import SPECIAL_TOKENS, VOCAB_LEN, build_tokenizer, save_tokenizer, special_token_ids

SUPPORTED_KINDS = ("llada", "dream")

TINY_CONFIGS = {
    "llada": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=192, vocab_size=104,
                  embedding_size=104, max_sequence_length=512, init_std=0.1),
    "dream": dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, intermediate_size=224,
                  num_hidden_layers=2, vocab_size=104, max_position_embeddings=512, initializer_range=0.1),
}

_HERE = os.path.dirname(os.path.abspath(__file__))

# kind -> (config class, model class, remote-code folder, configuration module, modeling module, other modules)
_FAMILIES = {
    "llada": (LLaDAConfig, LLaDAModelLM, "llada", "configuration_llada", "modeling_llada", ()),
    "dream": (DreamConfig, DreamModel, "dream", "configuration_dream", "modeling_dream", ("generation_utils",)),
}


def _check_kind(kind) -> None:
    if kind not in SUPPORTED_KINDS:
        raise ValueError(f"unknown reference model kind {kind!r}; allowed: {', '.join(SUPPORTED_KINDS)}")


def remote_code_files(kind: str) -> list[str]:
    """Absolute paths of the remote-code files of ``kind``: configuration, modeling, then the further modules
    the modeling file imports (Dream: ``generation_utils.py``)."""
    _check_kind(kind)
    _, _, folder, config_module, model_module, others = _FAMILIES[kind]
    return [os.path.join(_HERE, folder, f"{name}.py") for name in (config_module, model_module, *others)]


def tiny_config(kind: str, **overrides):
    """The tiny config of ``kind`` (:data:`TINY_CONFIGS` plus the tokenizer's special-token ids), with
    ``overrides`` applied, ``auto_map`` and ``architectures`` set. An override that is not a config key raises
    ``ValueError`` listing the allowed keys; a vocabulary smaller than the tokenizer's raises too."""
    _check_kind(kind)
    config_cls, model_cls, _, config_module, model_module, _ = _FAMILIES[kind]
    allowed = set(inspect.signature(config_cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} config keys {unknown}; allowed: {', '.join(sorted(allowed))}")
    ids = special_token_ids(kind)
    values = {**TINY_CONFIGS[kind], **{k: ids[k] for k in ("mask_token_id", "eos_token_id", "pad_token_id",
                                                               "bos_token_id")}}
    if kind == "llada" and "vocab_size" in overrides and "embedding_size" not in overrides:
        values["embedding_size"] = overrides["vocab_size"]
    values.update(overrides)
    if values["vocab_size"] < VOCAB_LEN:
        raise ValueError(f"vocab_size {values['vocab_size']} does not cover the {VOCAB_LEN}-token tokenizer")
    config = config_cls(**values)
    config.auto_map = {
        "AutoConfig": f"{config_module}.{config_cls.__name__}",
        "AutoModel": f"{model_module}.{model_cls.__name__}",
        "AutoModelForCausalLM": f"{model_module}.{model_cls.__name__}",
    }
    config.architectures = [model_cls.__name__]
    return config


def build_tiny(kind: str, seed: int = 0, **config_overrides):
    """A tiny randomly initialised ``kind`` model in memory (the package's classes, fp32, eval mode).

    Every module is (re-)initialised by the model's ``_init_weights`` in ``model.modules()`` order under
    ``torch.manual_seed(seed)``, so the weights depend on ``seed`` only, not on how the installed transformers
    version consumes random numbers while constructing the model (4.57 and 5.x give the same tensors). The
    global RNG state is left untouched.

    Unlike ``_init_weights`` alone (unit norms, zero biases), the RMSNorm weights are then drawn from
    U(0.5, 1.5) and every bias (Dream's q/k/v) from N(0, std), as in a trained checkpoint: folding a norm
    into its consumers, or a transform into a biased projection, is then visible in the outputs."""
    config = tiny_config(kind, **config_overrides)
    model_cls = _FAMILIES[kind][1]
    std = config.init_std if kind == "llada" else config.initializer_range
    with torch.random.fork_rng(devices=[]):
        model = model_cls(config)
        torch.manual_seed(seed)
        with torch.no_grad():
            for module in model.modules():
                model._init_weights(module)
            for name, param in model.named_parameters():
                if name.endswith(".bias"):
                    param.normal_(0.0, std)
                elif param.dim() == 1:  # RMSNorm weights
                    param.uniform_(0.5, 1.5)
    return model.eval()


def save_tiny(kind: str, path, seed: int = 0, **config_overrides) -> str:
    """Write a tiny randomly initialised ``kind`` checkpoint to the folder ``path`` and return ``str(path)``.

    The folder gets ``config.json`` (with ``auto_map``), ``model.safetensors`` (fp32), the remote-code files
    and the tokenizer files; load it with ``AutoModel.from_pretrained(path, trust_remote_code=True)`` (or
    ``AutoModelForCausalLM``) and ``AutoTokenizer.from_pretrained(path)``. The same ``seed`` gives bit-identical
    weights. ``config_overrides`` replace any config key (``ValueError`` for a key the config does not have)."""
    model = build_tiny(kind, seed, **config_overrides)
    path = str(path)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    for source in remote_code_files(kind):
        shutil.copyfile(source, os.path.join(path, os.path.basename(source)))
    save_tokenizer(kind, path)
    return path


__all__ = [
    "SUPPORTED_KINDS",
    "TINY_CONFIGS",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "save_tokenizer",
    "special_token_ids",
    "save_tiny",
    "build_tiny",
    "tiny_config",
    "remote_code_files",
    "LLaDAConfig",
    "LLaDAModelLM",
    "DreamConfig",
    "DreamModel",
]
