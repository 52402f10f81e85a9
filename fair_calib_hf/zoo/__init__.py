"""The model zoo: reference diffusion LMs trained in this project, shipped inside the package.

No real LLaDA or Dream weights can be downloaded where this project is built and tested, so it trains its own
small LLaDA-style and Dream-style models (:mod:`.train`) on tasks generated offline (:mod:`.tasks`) and ships
them as ordinary Hugging Face checkpoints (safetensors, ``config.json`` with ``auto_map`` remote code, tokenizer,
model card) under ``fair_calib_hf/zoo/models/NAME``.

A zoo model is named ``zoo:NAME`` wherever the project takes a model (CLI, benchmarks, :func:`resolve`)::

    from transformers import AutoModel
    from fair_calib_hf.zoo import resolve
    model = AutoModel.from_pretrained(resolve("zoo:llada-arith"), trust_remote_code=True)

:func:`resolve` returns any other string unchanged (a local path or a hub id), so code can pass user input
through it.
"""
from __future__ import annotations

import json
import os
import shutil

from ..reference_models import remote_code_files, save_tokenizer
from .tasks import get_task, python_version
from .recipes import RECIPES, TrainConfig

PREFIX = "zoo:"
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

def available() -> list[str]:
    """Names of the zoo models present in this installation (trained and saved)."""
    return sorted(name for name in RECIPES if os.path.isfile(os.path.join(MODELS_DIR, name, "config.json")))


def resolve(name_or_path: str) -> str:
    """The local folder of ``"zoo:NAME"``; any other string is returned unchanged. An unknown or missing zoo
    name raises ``ValueError`` listing the available ones."""
    if not isinstance(name_or_path, str) or not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX):]
    if name not in available():
        raise ValueError(f"unknown zoo model {name_or_path!r}; available: "
                         f"{', '.join(PREFIX + n for n in available()) or 'none (not trained in this installation)'}")
    return os.path.join(MODELS_DIR, name)


def recipe_of(name_or_path: str) -> dict | None:
    """The training recipe stored in a zoo model's ``training.json``, or ``None`` for a folder that is not a zoo
    model."""
    path = os.path.join(resolve(name_or_path), "training.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)["recipe"]


def task_of(name_or_path: str):
    """The :class:`~.tasks.Task` a zoo model was trained on, or ``None`` for a folder that is not a zoo model."""
    recipe = recipe_of(name_or_path)
    return None if recipe is None else get_task(recipe["task"])


def family_of(name_or_path: str) -> str | None:
    """The architecture family (``"llada"`` / ``"dream"``) a zoo model was trained as, or ``None``."""
    recipe = recipe_of(name_or_path)
    return None if recipe is None else recipe["kind"]


def save_reference_model(name: str, model, cfg: TrainConfig, history: list, out: str | None = None) -> str:
    """Write a trained model as a Hugging Face checkpoint (fp32 safetensors, remote code, tokenizer,
    ``training.json`` with the recipe and the loss curve) into ``out`` (default ``MODELS_DIR/name``), through a
    temporary folder moved into place, and return the folder."""
    final = out or os.path.join(MODELS_DIR, name)
    tmp = final.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    for source in remote_code_files(cfg.kind):
        shutil.copyfile(source, os.path.join(tmp, os.path.basename(source)))
    save_tokenizer(cfg.kind, tmp)
    from dataclasses import asdict

    record = {"name": name, "recipe": asdict(cfg), "python": python_version(),
              "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
              "parameters": sum(p.numel() for p in model.parameters()), "history": history}
    with open(os.path.join(tmp, "training.json"), "w") as handle:
        json.dump(record, handle, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
