"""Pre-quantized checkpoints: building the packed skeleton and refusing incomplete or mismatched loads.

transformers only *logs* missing keys and fills them with uninitialised memory. For a packed model that
means silent garbage, so after a pre-quantized load every packed buffer is checked against the checkpoint
(present, right shape, right dtype) and an error names the first problems found.
"""
from __future__ import annotations

import json
import os
import stat

import torch
from safetensors import safe_open
from torch import nn

from .architectures import get_adapter
from .modules import PackedLinear, WeightOnlyLinear
from .targets import block_targets, set_submodule

PACKED_SUFFIXES = ("weight_packed", "weight_int8", "weight_scale", "input_clip")
"""Buffer names only a packed module has; such a key on a non-packed module means a config mismatch."""

_ST_DTYPES = {
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "BOOL": torch.bool,
}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match what its ``quantization_config`` says it contains."""


def build_packed_skeleton(model: nn.Module, config) -> list[str]:
    """Swap every quantization target for an empty packed linear of the exact saved layout: ``W4A4Linear``
    (transform factors and online diagonal as :func:`fair_calib_hf.calibration.sites.transform_layout`
    decides; ``W4A8Linear`` / ``W8A8Linear`` for 8-bit activations) or, for a weight-only precision, ``WeightOnlyLinear`` (bits, group size), on the linear's device
    (usually meta). Returns the converted module paths."""
    from .calibration.sites import transform_layout

    adapter = get_adapter(model)
    names = []
    for index, block in enumerate(adapter.blocks(model)):
        block_path = f"{adapter.blocks_path}.{index}"
        targets = [(n, m) for n, m in block_targets(block, block_path, config.modules_to_not_convert)
                   if not isinstance(m, PackedLinear)]
        converted = {n[len(block_path) + 1:] for n, _ in targets}
        for name, linear in targets:
            if config.precision.weight_only:
                packed = WeightOnlyLinear(linear.in_features, linear.out_features, config.w_bits, config.group_size,
                                          bias=linear.bias is not None, dtype=linear.weight.dtype,
                                          device=linear.weight.device)
                set_submodule(model, name, packed)
                names.append(name)
                continue
            factors, online_diag = transform_layout(config, adapter, name[len(block_path) + 1:],
                                                    linear.in_features, converted)
            packed = config.precision.packed_module()(
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
        if isinstance(module, PackedLinear):
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


def locate_checkpoint_files(name_or_path: str | None, hub_options: dict | None = None) -> list[str] | None:
    """The safetensors files of a local checkpoint folder, or of a hub checkpoint already in the local cache
    (no network access; ``hub_options``: ``revision`` / ``cache_dir`` / ``subfolder`` of the load,
    :mod:`.hub`), resolved in transformers' order: ``model.safetensors`` when present, else the shards
    of ``model.safetensors.index.json`` when they are all there; ``None`` if they cannot be found. Used where
    transformers does not hand the quantizer its checkpoint files (the 4.57 line) and by ``inspect``."""
    from .hub import cached_path

    if not name_or_path:
        return None
    single = cached_path(name_or_path, "model.safetensors", hub_options)
    if single:  # transformers' order: the single file first (an unsharded save after a sharded one leaves the
        return [single]  # old index behind, naming shards that save deleted)
    index = cached_path(name_or_path, "model.safetensors.index.json", hub_options)
    if index is not None:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(os.path.dirname(index), shard) for shard in shards]
        return files if all(os.path.isfile(f) for f in files) else None
    return None


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


def _header_problems(header: dict, model) -> list[str]:
    """What is wrong between a checkpoint's tensor ``header`` (name → (shape, dtype)) and the packed skeleton
    ``model``: missing, unexpected or mis-shaped packed tensors, and packed tensors of float-kept modules."""
    problems = _check(header, expected_packed_tensors(model))
    modules = dict(model.named_modules())
    for key in header:
        module_name, _, leaf = key.rpartition(".")
        if leaf in PACKED_SUFFIXES and not isinstance(modules.get(module_name), PackedLinear):
            problems.append(f"packed tensor {key} belongs to a module the config keeps in float")
    return problems


def _raise(problems: list[str], where: str) -> None:
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise CheckpointMismatchError(
            f"fair_calib checkpoint {where} does not match its quantization_config: {shown}. "
            "Refusing to load a model with missing or mis-shaped packed weights."
        )


PRECISION_FIELDS = ("w_bits", "a_bits", "group_size")
"""The ``quantization_config`` fields that fix how the packed tensors are read: ``config.json`` must agree with
the copy written into the safetensors header (W4A4 and W4A8 tensors have the same shapes; only these tell them
apart)."""


def _precision_problems(meta: dict, config) -> list[str]:
    """Where ``config`` disagrees with the quantization config in the header ``meta`` on :data:`PRECISION_FIELDS`
    (nothing when the header has none: checkpoints written before it was stored)."""
    if config is None or "quantization_config" not in meta:
        return []
    try:
        written = json.loads(meta["quantization_config"])
    except ValueError:
        return ["the safetensors header's quantization_config is not JSON"]
    problems = []
    for field in PRECISION_FIELDS:
        if field in written and written[field] != getattr(config, field, None):
            problems.append(f"config.json says {field}={getattr(config, field, None)!r} but the weights were written "
                            f"with {field}={written[field]!r} (safetensors header)")
    return problems


def verify_checkpoint_files(model: nn.Module, files: list[str] | None, config=None) -> None:
    """Check the checkpoint headers: every packed buffer present with the right shape/dtype, no packed tensor
    belonging to a module that the config says stays in float, and (given the ``config`` it is loaded with)
    the same precision fields as the header's copy of the quantization config. Raises
    :class:`CheckpointMismatchError` listing the problems."""
    if not files:
        return
    found = read_checkpoint_header(list(files))
    if not found:
        return
    problems = _precision_problems(read_header_metadata(list(files)), config) + _header_problems(found, model)
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
        if isinstance(module, PackedLinear):
            # the checkpoint's view (a prepared CPU layout rebuilds the stored codes): check the codes it holds
            for key, buf in module.state_dict(keep_vars=True).items():
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


def canonicalize_header_metadata(path: str) -> bool:
    """Rewrite the header of the safetensors file ``path`` with its ``__metadata__`` keys in sorted order, so that
    saving the same model twice gives the same bytes (safetensors 0.8 writes them in a random order on every
    save: upstream issue safetensors#584). Only the order changes: the same keys, values and tensor entries, the
    same header length (the JSON is re-serialized compactly, as safetensors writes it, and padded with spaces to
    the old length), so the tensor data does not move; the few header bytes are overwritten in place. Returns
    whether the file changed; ``False`` (file untouched) when there is nothing to reorder or the re-serialized
    header would not have the same length (an escape written differently)."""
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    header = json.loads(raw)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or len(meta) < 2:
        return False
    ordered = {"__metadata__": dict(sorted(meta.items())), **{k: v for k, v in header.items() if k != "__metadata__"}}
    new = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(new) != len(raw.rstrip(b" ")) or json.loads(new) != header:
        return False
    new = new + b" " * (n - len(new))
    if new == raw:
        return False
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(new)
        f.flush()
        os.fsync(f.fileno())
    return True


# -- robustness: corrupted files, foreign quantization, atomic saves, inspection -----------------------------

class CorruptCheckpointError(ValueError):
    """A safetensors file that cannot be read (truncated, corrupted, not safetensors)."""


def check_safetensors_files(files) -> None:
    """Open every safetensors file's header and check that its data section is complete; raise
    :class:`CorruptCheckpointError` naming the file otherwise."""
    import struct

    for path in files or ():
        path = str(path)
        if not path.endswith(".safetensors"):
            continue
        if not os.path.isfile(path):
            raise CorruptCheckpointError(f"checkpoint file {path} is missing")
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError(f"{size} bytes, shorter than a safetensors header")
                n = struct.unpack("<Q", head)[0]
                if n > size - 8:
                    raise ValueError(f"header of {n} bytes does not fit in a {size}-byte file")
                header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                raise ValueError(f"tensor data needs {8 + n + end} bytes but the file has {size} (truncated)")
            with safe_open(path, framework="pt"):
                pass
        except CorruptCheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - any parse failure means an unreadable file
            raise CorruptCheckpointError(
                f"corrupted or truncated safetensors file {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err


def read_config_json(name_or_path: str | None, hub_options: dict | None = None) -> dict | None:
    """``config.json`` of a local checkpoint folder or of a hub checkpoint in the local cache (no network;
    ``hub_options``: ``revision`` / ``cache_dir`` / ``subfolder`` of the load, :mod:`.hub`), or ``None``."""
    from .hub import cached_path

    path = cached_path(name_or_path, "config.json", hub_options) if name_or_path else None
    if path is None:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def foreign_quantization(name_or_path: str | None, hub_options: dict | None = None) -> str | None:
    """The ``quant_method`` of a checkpoint already quantized by another method (``None`` if the checkpoint is
    full precision, fair_calib's own, or cannot be read); ``hub_options`` as for :func:`read_config_json`."""
    cfg = read_config_json(name_or_path, hub_options) or {}
    qc = cfg.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
    return None if method == "fair_calib" else str(method)


def refuse_existing_output(path: str, overwrite: bool) -> None:
    """``FileExistsError`` if ``path`` exists (a file, or a non-empty folder) and ``overwrite`` is false."""
    if os.path.isfile(path):
        raise FileExistsError(f"output path {path} is an existing file")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"output directory {path} already exists and is not empty; "
                              "pass overwrite=True to replace it")


def check_output_location(path: str) -> None:
    """Refuse, before any work, an output ``path`` that cannot be created: its nearest existing ancestor must be a
    folder this process can write (tried by creating and removing a temporary folder in it, which also holds for
    root and read-only file systems). ``NotADirectoryError`` / ``PermissionError`` naming the path, the
    ancestor and the fix."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NotADirectoryError(f"cannot write {path}: {ancestor} is a file, not a folder; choose another output "
                                 "path")
    try:
        os.rmdir(_mkdir_unique(ancestor, ".fair_calib-write-check-"))
    except OSError as err:
        raise PermissionError(f"cannot write {path}: {ancestor} is not writable ({err.strerror or err}); choose an "
                              "output path in a folder you can write") from err


def chmod_to_umask(*paths: str) -> None:
    """Give each file (and each file under each folder) of ``paths`` the mode a plain ``open(path, "w")``
    gives under the process umask (0666 minus the umask): ``safetensors`` writes its files 0600, which would
    hide a checkpoint or a prior from others on a shared machine. Folders are left as they are."""
    mask = os.umask(0)
    os.umask(mask)
    mode = 0o666 & ~mask
    for path in paths:
        if os.path.isdir(path):
            for root, _, names in os.walk(path):
                for name in names:
                    full = os.path.join(root, name)
                    if os.path.isfile(full) and not os.path.islink(full):
                        os.chmod(full, mode)
        elif os.path.isfile(path):
            os.chmod(path, mode)


def _mkdir_unique(parent: str, prefix: str) -> str:
    """Create and return a new folder ``parent/prefix<random>`` with ``os.mkdir``'s default mode (0777 minus
    the umask)."""
    import secrets

    for _ in range(100):
        path = os.path.join(parent, prefix + secrets.token_hex(4))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary folder in {parent}")


class atomic_directory:
    """Context manager that yields a fresh temporary folder next to ``path`` and, when the block succeeds,
    moves it into place as ``path`` (replacing an existing folder only with ``overwrite``). On any error the
    temporary folder is removed and ``path`` is left exactly as it was. The folder gets the mode a plain
    ``mkdir`` gives under the user's umask, or the mode of the empty folder the user created beforehand (not
    ``tempfile.mkdtemp``'s 0700, which would hide the checkpoint from others on a shared machine), and its
    files the mode ``open`` gives under the umask (:func:`chmod_to_umask`)::

        with atomic_directory("out/llada-w4a4", overwrite=False) as tmp:
            model.save_pretrained(tmp)
    """

    def __init__(self, path: str, overwrite: bool = False):
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self.overwrite = overwrite
        self.tmp = None

    def __enter__(self) -> str:
        refuse_existing_output(self.path, self.overwrite)
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = _mkdir_unique(parent, f".{os.path.basename(self.path)}.tmp-")
        if os.path.isdir(self.path):  # an empty folder the user made: keep its permissions
            os.chmod(self.tmp, stat.S_IMODE(os.stat(self.path).st_mode))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        import shutil
        import tempfile

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            chmod_to_umask(self.tmp)
            if os.path.isdir(self.path):
                refuse_existing_output(self.path, self.overwrite)  # appeared meanwhile?
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.old-", dir=os.path.dirname(self.path))
                os.rmdir(old)
                os.replace(self.path, old)
                os.replace(self.tmp, self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.path)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False


def _dtype_bytes(name: str | None) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}.get(str(name).replace("torch.", ""), 4)


def describe_checkpoint(path: str, check_layout: bool = True) -> dict:
    """What a fair_calib checkpoint folder contains (for ``fair-calib inspect``): method and bits, packed and
    float-kept linears, transforms, the stored prior, sizes on disk vs the float model, and (``check_layout``)
    whether the tensors match what the ``quantization_config`` describes. Raises ``ValueError`` for a folder
    that is not a readable fair_calib checkpoint."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    cfg = read_config_json(path)
    if cfg is None:
        raise ValueError(f"{path} has no readable config.json: not a transformers checkpoint")
    qc = cfg.get("quantization_config")
    if not qc:
        raise ValueError(f"{path} is not quantized (config.json has no quantization_config)")
    if qc.get("quant_method") != "fair_calib":
        raise ValueError(f"{path} is quantized with {qc.get('quant_method')!r}, not fair_calib")
    files = locate_checkpoint_files(path)
    if not files:
        raise ValueError(f"{path} has no safetensors weights (model.safetensors or an index)")
    check_safetensors_files(files)
    header = read_checkpoint_header(files)
    meta = read_header_metadata(files)
    packed = sorted(k.rpartition(".")[0] for k in header if k.endswith((".weight_packed", ".weight_int8")))
    packed_set = set(packed)
    float_2d = sorted(k[: -len(".weight")] for k, (shape, _) in header.items()
                      if k.endswith(".weight") and len(shape) == 2 and k[: -len(".weight")] not in packed_set)
    transforms = {}
    for m in packed:
        left, right = header.get(f"{m}.input_transform.left"), header.get(f"{m}.input_transform.right")
        if left is not None:
            key = f"kronecker {left[0][0]}x{right[0][0] if right else 1}" + (
                " + online diag" if f"{m}.input_transform.diag" in header else "")
            transforms[key] = transforms.get(key, 0) + 1
    dtype_name = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    elem = _dtype_bytes(dtype_name)
    disk = sum(os.path.getsize(f) for f in files)
    float_bytes = 0
    for key, (shape, dtype) in header.items():
        module, _, leaf = key.rpartition(".")
        numel = 1
        for d in shape:
            numel *= d
        if module in packed_set:
            if leaf == "weight_int8":
                float_bytes += numel * elem
            elif leaf == "weight_packed":
                out_f = shape[0]
                left = header.get(f"{module}.input_transform.left")
                right = header.get(f"{module}.input_transform.right")
                in_f = left[0][0] * right[0][0] if left and right else shape[1] * 2  # odd widths pad one nibble
                float_bytes += out_f * in_f * elem
            elif leaf == "bias":
                float_bytes += numel * elem
        else:
            float_bytes += numel * (torch.empty(0, dtype=dtype).element_size() if dtype is not None else elem)
    prior = None
    if PRIOR_METADATA_KEY in meta:
        d = json.loads(meta[PRIOR_METADATA_KEY])
        prior = {"positions": len(d["weights"]), "window": len(d["frontier"]), "metadata": d.get("metadata", {}),
                 "weights": d["weights"]}
    layout = {"checked": False}
    if check_layout:
        layout = _check_layout(path, cfg, qc, header)
    return {"path": os.path.abspath(path), "model_type": cfg.get("model_type"), "dtype": dtype_name,
            "method": qc.get("method"), "w_bits": qc.get("w_bits"), "a_bits": qc.get("a_bits"),
            "group_size": qc.get("group_size"), "weight_rounding": qc.get("weight_rounding") or "rtn",
            "format_version": qc.get("format_version"), "pack_format": qc.get("pack_format"),
            "quantization_config": qc, "files": [os.path.basename(f) for f in files],
            "packed": packed, "kept_float": float_2d, "transforms": transforms, "prior": prior,
            "disk_bytes": disk, "float_bytes": float_bytes, "layout": layout,
            "writer_version": meta.get("fair_calib_version")}


def _check_layout(path: str, cfg: dict, qc: dict, header: dict) -> dict:
    """Build the packed skeleton on the meta device from the checkpoint's own config and compare it with the
    tensors in the files."""
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModel

        from .config import FairCalibConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        with init_empty_weights():
            model = AutoModel.from_config(config, trust_remote_code=True)
        build_packed_skeleton(model, FairCalibConfig(**qc))
    except Exception as err:  # noqa: BLE001 - report, do not fail the inspection
        return {"checked": False, "reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    problems = _header_problems(header, model)
    return {"checked": True, "ok": not problems, "problems": problems}
