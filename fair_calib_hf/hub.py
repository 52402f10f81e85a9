"""The hub options of the model load in progress, for the files the plugin reads itself.

``from_pretrained(repo, revision=..., cache_dir=..., local_files_only=..., token=..., subfolder=...)`` applies
these options to the files transformers reads; a quantizer is not handed them (no hook receives them, on 4.57 or
5.x). The plugin reads two files of its own: ``config.json`` (is the checkpoint already quantized by another
method?) and, for text calibration data, the tokenizer. Read with the defaults, they would come from another
revision (``main`` instead of ``v2``), another cache (a repo present only in a custom ``cache_dir``: "couldn't
connect") or the network despite ``local_files_only``.

:func:`load_options_in_progress` reads the options from the ``PreTrainedModel.from_pretrained`` call that runs
the quantizer: they are that method's own parameters in both transformers lines (``cache_dir``, ``revision``,
``token``, ``local_files_only``, ``proxies``; ``subfolder`` taken from its keyword arguments before the quantizer
is made). The quantizer takes them once, in ``validate_environment``.
"""
from __future__ import annotations

import os
import sys

HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "subfolder", "proxies")
"""``from_pretrained`` options that say where a file comes from; what :func:`load_options_in_progress` returns."""

REPO_OPTIONS = ("revision", "subfolder")
"""The :data:`HUB_OPTIONS` that name a place inside one repository; the others (cache, token, offline, proxies)
hold for any repository read in the same run (``fair-calib eval``'s ``--teacher``)."""


def options_of(values) -> dict:
    """``{option: value}`` of the :data:`HUB_OPTIONS` set in ``values`` (a mapping, e.g. ``from_pretrained``'s
    keyword arguments or ``vars()`` of the parsed command line); unset ones (``None``, ``""``, ``False``) left
    out."""
    return {k: values[k] for k in HUB_OPTIONS if values.get(k) not in (None, "", False)}


def load_options_in_progress() -> dict:
    """``{option: value}`` of :data:`HUB_OPTIONS` given to the innermost ``PreTrainedModel.from_pretrained`` call on
    this thread's stack (unset ones left out: ``None``, ``""``, ``False``); ``{}`` outside such a call."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "from_pretrained" and code.co_filename.endswith(os.path.join("transformers",
                                                                                          "modeling_utils.py")):
            return options_of(frame.f_locals)
        frame = frame.f_back
    return {}


def cached_path(name_or_path: str, filename: str, options: dict | None = None) -> str | None:
    """The local path of ``filename`` of a checkpoint: in a local folder (under ``subfolder``), or in the hub cache
    (``cache_dir``, ``revision``, ``subfolder`` of ``options``; no network access); ``None`` if it is not there."""
    options = options or {}
    subfolder = options.get("subfolder") or ""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, subfolder, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(name_or_path, f"{subfolder}/{filename}" if subfolder else filename,
                                      cache_dir=options.get("cache_dir"), revision=options.get("revision"))
    except Exception:  # noqa: BLE001 - not a valid repo id
        return None
    return path if isinstance(path, str) else None
