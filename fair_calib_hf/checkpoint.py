"""Pre-quantized checkpoints: building the packed skeleton and refusing incomplete or mismatched loads.

transformers only *logs* missing keys and fills them with uninitialised memory. For a packed model that
means silent garbage, so after a pre-quantized load every packed buffer is checked against the checkpoint
(present, right shape, right dtype) and an error names the first problems found.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from torch import nn

from .architectures import get_adapter
from .modules import W4A4Linear
from .targets import block_targets, set_submodule

PACKED_SUFFIXES = ("weight_packed", "weight_scale", "input_clip")
"""Buffer names only a packed module has; such a key on a non-packed module means a config mismatch."""

_ST_DTYPES = {
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "BOOL": torch.bool,
}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match what its ``quantization_config`` says it contains."""


def build_packed_skeleton(model: nn.Module, config) -> list[str]:
    """Swap every quantization target for an empty ``W4A4Linear`` of the exact saved layout (transform
    factors and online diagonal as :func:`fair_calib_hf.calibration.sites.transform_layout` decides), on the
    linear's device (usually meta). Returns the converted module paths."""
    from .calibration.sites import transform_layout

    adapter = get_adapter(model)
    names = []
    for index, block in enumerate(adapter.blocks(model)):
        block_path = f"{adapter.blocks_path}.{index}"
        targets = [(n, m) for n, m in block_targets(block, block_path, config.modules_to_not_convert)
                   if not isinstance(m, W4A4Linear)]
        converted = {n[len(block_path) + 1:] for n, _ in targets}
        for name, linear in targets:
            factors, online_diag = transform_layout(config, adapter, name[len(block_path) + 1:],
                                                    linear.in_features, converted)
            packed = W4A4Linear(
                linear.in_features, linear.out_features, bias=linear.bias is not None,
                dtype=linear.weight.dtype, device=linear.weight.device,
                transform_factors=factors, transform_diag=online_diag,
            )
            set_submodule(model, name, packed)
            names.append(name)
    return names


def expected_packed_tensors(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """``{state-dict key: (shape, dtype or None for any float)}`` of every packed buffer in ``model``."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, W4A4Linear):
            for key, spec in module.expected_buffers().items():
                out[f"{name}.{key}"] = spec
    return out


def read_checkpoint_header(files: list[str]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key: (shape, dtype)}`` of every tensor in the given safetensors files (headers only)."""
    out = {}
    for path in files:
        if not str(path).endswith(".safetensors"):
            continue
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype()))
    return out


def locate_checkpoint_files(name_or_path: str | None) -> list[str] | None:
    """The safetensors files of a local checkpoint folder, or of a hub checkpoint already in the local cache
    (no network access); ``None`` if they cannot be found. Used where transformers does not hand the
    quantizer its checkpoint files (the 4.57 line)."""
    if not name_or_path:
        return None
    if os.path.isdir(name_or_path):
        def lookup(filename):
            path = os.path.join(name_or_path, filename)
            return path if os.path.isfile(path) else None
    else:
        from huggingface_hub import try_to_load_from_cache

        def lookup(filename):
            path = try_to_load_from_cache(name_or_path, filename)
            return path if isinstance(path, str) else None
    index = lookup("model.safetensors.index.json")
    if index is not None:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(os.path.dirname(index), shard) for shard in shards]
        return files if all(os.path.isfile(f) for f in files) else None
    single = lookup("model.safetensors")
    return [single] if single else None


def _check(found: dict, expected: dict) -> list[str]:
    problems = []
    for key, (shape, dtype) in expected.items():
        if key not in found:
            problems.append(f"missing {key}")
            continue
        got_shape, got_dtype = found[key]
        if tuple(got_shape) != tuple(shape):
            problems.append(f"{key} has shape {list(got_shape)}, expected {list(shape)}")
        elif dtype is not None and got_dtype != dtype:
            problems.append(f"{key} has dtype {got_dtype}, expected {dtype}")
        elif dtype is None and got_dtype is not None and not got_dtype.is_floating_point:
            problems.append(f"{key} has dtype {got_dtype}, expected a floating dtype")
    return problems


def _raise(problems: list[str], where: str) -> None:
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise CheckpointMismatchError(
            f"fair_calib checkpoint {where} does not match its quantization_config: {shown}. "
            "Refusing to load a model with missing or mis-shaped packed weights."
        )


def verify_checkpoint_files(model: nn.Module, files: list[str] | None) -> None:
    """Check the checkpoint headers: every packed buffer present with the right shape/dtype, and no packed
    tensor belonging to a module that the config says stays in float."""
    if not files:
        return
    found = read_checkpoint_header(list(files))
    if not found:
        return
    problems = _check(found, expected_packed_tensors(model))
    modules = dict(model.named_modules())
    for key in found:
        module_name, _, leaf = key.rpartition(".")
        if leaf in PACKED_SUFFIXES and not isinstance(modules.get(module_name), W4A4Linear):
            problems.append(f"packed tensor {key} belongs to a module the config keeps in float")
    _raise(problems, f"({', '.join(os.path.basename(str(f)) for f in files)})")


def restore_float32_buffers(model: nn.Module, files: list[str] | None) -> None:
    """Reload, exactly as stored, the packed float32 buffers that were cast on load.

    transformers 4.57 casts every floating checkpoint tensor of a quantized model to the load dtype
    (``dtype=torch.bfloat16`` would round the fp32 scales to bf16); 5.x keeps the skeleton's dtype and
    this is a no-op there."""
    if not files:
        return
    cast = {key for key, (_, dtype) in expected_packed_tensors(model).items()
            if dtype == torch.float32 and model.get_buffer(key).dtype != torch.float32}
    for path in files:
        if not cast or not str(path).endswith(".safetensors"):
            continue
        with safe_open(path, framework="pt") as f:
            for key in cast & set(f.keys()):
                module_name, _, leaf = key.rpartition(".")
                module = model.get_submodule(module_name)
                module._buffers[leaf] = f.get_tensor(key).to(module._buffers[leaf].device)
                cast.discard(key)


def verify_loaded_model(model: nn.Module) -> None:
    """Check the loaded buffers themselves: materialised (not meta), right shape and dtype."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, W4A4Linear):
            for key, buf in module.named_buffers():
                if not buf.is_meta:  # a meta buffer was never loaded: reported as missing
                    found[f"{name}.{key}"] = (tuple(buf.shape), buf.dtype)
    _raise(_check(found, expected_packed_tensors(model)), "(loaded buffers)")


def missing_packed_keys(model: nn.Module, missing_keys) -> list[str]:
    """The subset of transformers' ``missing_keys`` that are packed buffers."""
    expected = expected_packed_tensors(model)
    return [k for k in missing_keys if k in expected]


PRIOR_METADATA_KEY = "fair_calib_prior"


def read_header_metadata(files: list[str] | None) -> dict[str, str]:
    """The header metadata of the first safetensors file (``{}`` if none)."""
    for path in files or ():
        if str(path).endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                return dict(f.metadata() or {})
    return {}


def safetensors_metadata(config, version: str, prior_json: str | None = None) -> dict[str, str]:
    """Header metadata written into every shard (all values strings, as safetensors requires); with
    ``prior_json`` the Stage I position prior travels with the checkpoint."""
    extra = {PRIOR_METADATA_KEY: prior_json} if prior_json else {}
    return {
        **extra,
        "fair_calib_format": str(config.format_version),
        "fair_calib_version": version,
        "pack_format": config.pack_format,
        "quant_method": config.quant_method,
        "method": config.method,
        "quantization_config": json.dumps(config.to_dict(), sort_keys=True),
    }
