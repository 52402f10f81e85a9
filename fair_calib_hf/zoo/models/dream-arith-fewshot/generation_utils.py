"""Generation utilities of the reference Dream-style model (remote code, imported by ``modeling_dream.py``).

The upstream ``Dream-org/Dream-v0-*`` checkpoints keep ``DreamGenerationConfig`` and ``DreamGenerationMixin`` (the
diffusion sampler, ``diffusion_generate``) in this separate module, which ``modeling_dream.py`` imports with
``from .generation_utils import DreamGenerationMixin, DreamGenerationConfig``; the reference model reproduces
that layout so that loading and saving see the same remote-code module graph as with the real checkpoints. The
sampler itself is not reproduced (:func:`fair_calib_hf.decoding.diffusion_generate` is the package's sampler).

This file may import only transformers and the standard library.
"""
from transformers import GenerationConfig


class DreamGenerationConfig(GenerationConfig):
    """The diffusion sampler's settings (``steps``, ``alg``, ``eps``, ``mask_token_id``, ...) with the real
    class's defaults; every other key is set as an attribute. Like the real class, it does not call
    ``GenerationConfig.__init__`` and its ``validate`` has the pre-4.45 signature ``validate(is_init=False)``."""

    def __init__(self, **kwargs):
        defaults = {"temperature": 0.0, "top_p": None, "top_k": None, "max_length": 20, "max_new_tokens": None,
                    "eps": 1e-3, "steps": 512, "alg": "origin", "alg_temp": None, "num_return_sequences": 1,
                    "return_dict_in_generate": False, "output_history": False, "mask_token_id": None,
                    "pad_token_id": None, "bos_token_id": None, "eos_token_id": None, "generation_kwargs": {}}
        for key, value in defaults.items():
            setattr(self, key, kwargs.pop(key, value))
        self._from_model_config = kwargs.pop("_from_model_config", False)
        self._commit_hash = kwargs.pop("_commit_hash", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        if not self._from_model_config:
            for key, value in kwargs.items():
                setattr(self, key, value)
        self.validate(is_init=True)

    def validate(self, is_init=False, user_set_attributes=None):
        """Check the sampler settings (``steps`` ≥ 1, ``0 < eps < 1``); no ``strict`` argument.

        The real class's signature is ``validate(self, is_init=False)``. transformers 5.x also calls
        ``validate(user_set_attributes=...)`` while *loading* a generation config, so the real class cannot be
        loaded there at all; this one accepts that keyword so that the reference model loads on both lines and
        the save-time fault (``validate(strict=...)``) can be tested on both."""
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"DreamGenerationConfig: steps must be a positive int, got {self.steps!r}")
        if not 0.0 < float(self.eps) < 1.0:
            raise ValueError(f"DreamGenerationConfig: eps must be in (0, 1), got {self.eps!r}")


class DreamGenerationMixin:
    """Marks the model as able to generate (transformers' ``can_generate()`` matches the class name)."""
