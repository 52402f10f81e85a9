"""What ``save_pretrained`` of a quantized model needs beyond transformers.

1. **No silent mis-load.** transformers knows ``quant_method: "fair_calib"`` only after ``import fair_calib_hf``;
   without it, a quantized checkpoint loads as a float model with random weights and only a log line. So every
   save of a quantized model (``save_pretrained``, ``push_to_hub``) writes :data:`LOADER_FILE` into the folder
   — a remote-code module that imports ``fair_calib_hf`` (an ``ImportError`` saying ``pip install
   fair_calib_hf`` when it is missing) and re-exports the model's own classes — and points the model entries of
   ``config.json["auto_map"]`` at it. ``AutoModel.from_pretrained(path, trust_remote_code=True)`` imports the
   class before transformers looks the quantization method up, so the checkpoint loads correctly without an
   explicit ``import fair_calib_hf``, or fails with that error. This covers checkpoints whose model class is
   remote code (every supported family: LLaDA and Dream). Not covered: loading through the model class
   itself (``LLaDAModelLM.from_pretrained(path)`` with the user's own copy of the class), which bypasses
   ``auto_map``.

   The loader also imports, directly, every further module the model's own modules import relatively, at any
   depth (upstream Dream: ``modeling_dream.py`` imports ``generation_utils.py``): for a local folder,
   transformers 4.57 copies into its modules cache only the direct relative imports of the ``auto_map`` module
   (5.x: all of them), so a sibling imported one level further down would be missing there
   (``FileNotFoundError: .../transformers_modules/<folder>/<sibling>.py``).
2. **Dream's remote generation config.** The real Dream remote code (``Dream-org/Dream-v0-*``, its
   ``generation_utils.py``) replaces ``model.generation_config`` in an overridden ``from_pretrained`` by a
   ``GenerationConfig`` subclass whose ``validate(self, is_init=False)`` takes no ``strict`` argument.
   ``save_pretrained`` calls ``generation_config.save_pretrained``, which calls ``validate(strict=...)`` (4.57:
   ``strict=True``; 5.x: ``strict=<modified since loading>``) and fails with ``TypeError: ... unexpected
   keyword argument 'strict'``. :func:`tolerant_generation_config` works around it for the duration of one save
   only: the generation config object keeps its identity and its values; its class is swapped, inside the
   ``with`` block, for a subclass whose ``validate`` drops the keywords the original does not accept, and
   swapped back afterwards (also on error).

3. **The same bytes for the same model.** safetensors writes the header's ``__metadata__`` keys in a random order
   on every save (upstream issue safetensors#584), so two saves of one quantized model had different file
   hashes. After the save the weights files' headers are rewritten with the keys sorted
   (:func:`~fair_calib_hf.checkpoint.canonicalize_header_metadata`: same length, the tensor data untouched).

:func:`install_save_compat` makes a model's own ``save_pretrained`` (hence ``push_to_hub``) do all three, and copy
a zoo model's recipe (:func:`copy_zoo_recipe`) into its quantized copy; the quantizer installs it on every model
it calibrates or loads.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import shutil

_COMPAT_CLASSES: dict[type, type] = {}


def _accepted(method) -> set[str] | None:
    """Keyword names ``method`` accepts (``None``: any, it has ``**kwargs``)."""
    params = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _compat_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``validate`` drops keyword arguments ``cls.validate`` does not accept."""
    if cls not in _COMPAT_CLASSES:
        accepted = _accepted(cls.validate)
        original = cls.validate

        def validate(self, *args, **kwargs):
            return original(self, *args, **{k: v for k, v in kwargs.items() if k in accepted})
        _COMPAT_CLASSES[cls] = type(cls.__name__, (cls,), {"validate": validate, "__module__": cls.__module__,
                                                           "__qualname__": cls.__qualname__})
    return _COMPAT_CLASSES[cls]


@contextlib.contextmanager
def tolerant_generation_config(model):
    """Inside the block, ``model.generation_config.validate`` accepts ``strict=`` (and any other keyword its
    class's ``validate`` lacks) by dropping it; outside it nothing is changed. A model without a generation
    config, or whose config's ``validate`` accepts ``strict``, is left alone."""
    config = getattr(model, "generation_config", None)
    cls = type(config)
    accepted = _accepted(cls.validate) if config is not None else None
    if config is None or accepted is None or "strict" in accepted:
        yield
        return
    config.__class__ = _compat_class(cls)
    try:
        yield
    finally:
        config.__class__ = cls


LOADER_FILE = "fair_calib_loader.py"
"""The remote-code module written into every quantized checkpoint (see the module docstring)."""

_LOADER_HEADER = '''"""Loader of a fair_calib quantized checkpoint, written by fair_calib_hf.

transformers knows the "fair_calib" quantization method only once fair_calib_hf is imported; without it this
checkpoint would load as a float model with random weights. config.json's auto_map points here, so loading
the model imports fair_calib_hf first, then uses the model's own remote code unchanged.
"""
try:
    import fair_calib_hf  # noqa: F401  (registers the fair_calib quantizer with transformers)
except ImportError as err:
    raise ImportError(
        "This checkpoint is quantized with fair_calib (quant_method 'fair_calib'); loading it needs the "
        "fair_calib_hf package: pip install fair_calib_hf"
    ) from err

'''


def _is_config_or_tokenizer(auto_class: str) -> bool:
    return auto_class in ("AutoConfig", "AutoTokenizer") or auto_class.endswith(("Config", "Tokenizer",
                                                                                "Processor"))


def _indirect_imports(save_directory, modules) -> list[str]:
    """Names of the modules of ``save_directory`` that ``modules`` import relatively, at any depth (found the
    way transformers finds them, ``get_relative_import_files``), less ``modules`` themselves; sorted."""
    from transformers.dynamic_module_utils import get_relative_import_files

    folder = os.path.abspath(str(save_directory))
    found = set()
    for module in modules:
        for path in get_relative_import_files(os.path.join(folder, f"{module}.py")):
            if os.path.dirname(os.path.abspath(path)) == folder:
                found.add(os.path.splitext(os.path.basename(path))[0])
    return sorted(found - set(modules))


def write_loader(save_directory, model_module: str | None = None) -> bool:
    """Write :data:`LOADER_FILE` into a saved quantized checkpoint folder and point the model entries of its
    ``config.json`` ``auto_map`` (every entry but configs, tokenizers and processors) at it. Returns whether
    it did: ``False`` for a folder whose config has no ``auto_map`` model entry in this folder's own remote
    code (a native transformers class, or code referenced in another repository as ``repo--module.Class``).
    The loader imports the modules of those entries and, directly, every module they import relatively at
    any depth, so that transformers (4.57: only the direct imports of the ``auto_map`` module of a local
    folder) copies them all into its modules cache."""
    path = os.path.join(str(save_directory), "config.json")
    with open(path) as f:
        config = json.load(f)
    auto_map = dict(config.get("auto_map") or {})
    loader = os.path.splitext(LOADER_FILE)[0]
    imports, changed = {}, False
    for auto_class, ref in auto_map.items():
        if _is_config_or_tokenizer(auto_class) or not isinstance(ref, str) or "--" in ref:
            continue
        module, _, name = ref.rpartition(".")
        if module == loader:  # points at the loader already: re-export the class from the model's own module
            if not model_module or not os.path.isfile(os.path.join(str(save_directory), f"{model_module}.py")):
                continue
            module = model_module
        imports.setdefault(module, set()).add(name)
        auto_map[auto_class] = f"{loader}.{name}"
        changed = True
    if not changed:
        return False
    lines = [f"from .{module} import {', '.join(sorted(names))}  # noqa: F401" for module, names in sorted(imports.items())]
    for module in _indirect_imports(save_directory, imports):
        lines.append(f"from .{module} import __name__ as _{module}  # noqa: F401  (imported by the model's modules)")
    with open(os.path.join(str(save_directory), LOADER_FILE), "w") as f:
        f.write(_LOADER_HEADER + "\n".join(lines) + "\n")
    config["auto_map"] = auto_map
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return True


def remove_loader_routes(save_directory, model_module: str) -> None:
    """Point ``auto_map`` entries that still name the loader back at the model's own module ``model_module``
    (a dequantized model saved from a model loaded from a quantized checkpoint: transformers rewrites only
    the entry of the auto class the model was loaded with), and remove a stale loader file."""
    path = os.path.join(str(save_directory), "config.json")
    with open(path) as f:
        config = json.load(f)
    loader = os.path.splitext(LOADER_FILE)[0]
    auto_map = dict(config.get("auto_map") or {})
    stale = {k: v for k, v in auto_map.items() if isinstance(v, str) and v.rpartition(".")[0] == loader}
    if stale:
        auto_map.update({k: f"{model_module}.{v.rpartition('.')[2]}" for k, v in stale.items()})
        config["auto_map"] = auto_map
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
    if os.path.isfile(os.path.join(str(save_directory), LOADER_FILE)):
        os.remove(os.path.join(str(save_directory), LOADER_FILE))


def _save_pretrained(model, save_directory, *args, **kwargs):
    with tolerant_generation_config(model):
        result = type(model).save_pretrained(model, save_directory, *args, **kwargs)
    if os.path.isfile(os.path.join(str(save_directory), "config.json")):
        model_module = type(model).__module__.rpartition(".")[2]
        if getattr(model, "is_quantized", False):
            write_loader(save_directory, model_module)
            copy_zoo_recipe(model, save_directory)
            from .checkpoint import canonicalize_header_metadata, locate_checkpoint_files

            for path in locate_checkpoint_files(str(save_directory)) or []:
                canonicalize_header_metadata(path)
        else:  # dequantized: a plain float checkpoint again
            remove_loader_routes(save_directory, model_module)
    return result


ZOO_RECIPE_FILE = "training.json"
"""A zoo model's recipe (:func:`fair_calib_hf.zoo.recipe_of`): the task, and with it the prompt layout and
decoding, that ``fair-calib eval``, the lm-eval model and the quickstart read."""


def copy_zoo_recipe(model, save_directory) -> bool:
    """Copy the zoo recipe of the folder ``model`` was loaded from (``config._name_or_path``) into a saved
    quantized checkpoint, so that the quantized copy of a zoo model still names its task (no ``--task`` needed
    to evaluate it). Returns whether it did; a model not loaded from a zoo folder is left alone."""
    source = getattr(getattr(model, "config", None), "_name_or_path", None) or ""
    recipe = os.path.join(source, ZOO_RECIPE_FILE)
    target = os.path.join(str(save_directory), ZOO_RECIPE_FILE)
    if not os.path.isfile(recipe) or os.path.abspath(recipe) == os.path.abspath(target):
        return False
    shutil.copyfile(recipe, target)
    return True


def install_save_compat(model) -> None:
    """Make ``model.save_pretrained`` (and ``push_to_hub``, which calls it) run inside
    :func:`tolerant_generation_config` and then :func:`write_loader`. Set on the instance (a ``functools.partial``, which ``copy.deepcopy``
    rebinds to the copy); the class is not changed."""
    if not isinstance(model.__dict__.get("save_pretrained"), functools.partial):
        partial = functools.partial(_save_pretrained, model)
        functools.update_wrapper(partial, type(model).save_pretrained)
        model.save_pretrained = partial
