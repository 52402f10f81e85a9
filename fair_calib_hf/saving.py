"""Saving models whose remote code predates transformers' current ``GenerationConfig`` API.

The real Dream remote code (``Dream-org/Dream-v0-*``, its ``generation_utils.py``) replaces
``model.generation_config`` in an overridden ``from_pretrained`` by a ``GenerationConfig`` subclass whose
``validate(self, is_init=False)`` takes no ``strict`` argument. ``save_pretrained`` (and so ``push_to_hub``)
calls ``generation_config.save_pretrained``, which calls ``validate(strict=...)`` (4.57: ``strict=True``; 5.x:
``strict=<modified since loading>``) and fails with ``TypeError: ... unexpected keyword argument 'strict'``.

:func:`tolerant_generation_config` works around it for the duration of one save only: the generation config
object keeps its identity and its values; its class is swapped, inside the ``with`` block, for a subclass
whose ``validate`` drops the keywords the original does not accept, and swapped back afterwards (also on
error). :func:`install_save_compat` makes a model's own ``save_pretrained`` (hence ``push_to_hub``) run inside
it; the quantizer installs it on every model it calibrates or loads.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

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


def _save_pretrained(model, *args, **kwargs):
    with tolerant_generation_config(model):
        return type(model).save_pretrained(model, *args, **kwargs)


def install_save_compat(model) -> None:
    """Make ``model.save_pretrained`` (and ``push_to_hub``, which calls it) run inside
    :func:`tolerant_generation_config`. Set on the instance (a ``functools.partial``, which ``copy.deepcopy``
    rebinds to the copy); the class is not changed."""
    if not isinstance(model.__dict__.get("save_pretrained"), functools.partial):
        partial = functools.partial(_save_pretrained, model)
        functools.update_wrapper(partial, type(model).save_pretrained)
        model.save_pretrained = partial
