"""Per-architecture facts the quantizer and the calibration need, for the supported dLLM families.

Paths are full module paths from the top-level model (``model.named_modules()`` names).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelAdapter:
    """What is known of one model family.

    Attributes:
        family: short name (``"llada"``, ``"dream"``).
        model_types: ``config.model_type`` values of the family (compared case-insensitively).
        blocks_path: path of the ``nn.ModuleList`` of transformer blocks.
        embed_path: path of the token embedding.
        head_path: path of the LM head (always kept in float).
        logits_shift: 0 if the output at position i predicts token i (LLaDA); 1 if the output at i−1
            predicts token i (Dream).
        end_of_turn_token: the family's end-of-turn special token (a stop token besides EOS).
        norm_feeds: ``{norm path: consumer linear paths}`` inside a block (paths relative to the block):
            the RMSNorm whose output each group of linears reads (diagonal scales fold into its weight).
        up_feeds_down: ``(up path, down path)`` inside a block: the down-projection reads
            ``act(gate) * up``, so a diagonal scale on its input folds into the up-projection's output rows.
        max_positions_key: the config key holding the number of positions the model was built for (LLaDA
            ``max_sequence_length``, 4096 for LLaDA-8B; Dream ``max_position_embeddings``).
    """

    family: str
    model_types: tuple[str, ...]
    blocks_path: str
    embed_path: str
    head_path: str
    logits_shift: int
    end_of_turn_token: str
    norm_feeds: dict
    up_feeds_down: tuple[str, str]
    max_positions_key: str = ""

    def max_positions(self, config) -> int | None:
        """The number of positions (tokens) one forward may cover, from ``config.<max_positions_key>``;
        ``None`` if the config does not say (or states no positive integer)."""
        value = getattr(config, self.max_positions_key, None) if self.max_positions_key else None
        return value if isinstance(value, int) and value > 0 else None

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The model's transformer blocks, in order."""
        return model.get_submodule(self.blocks_path)

    def mask_token_id(self, config) -> int:
        """The mask token id, read from the model config."""
        mask_id = getattr(config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError(f"{self.family} config has no mask_token_id")
        return int(mask_id)

    def stop_token_ids(self, config, tokenizer=None) -> list[int]:
        """Token ids that end an answer: the config's EOS id(s), plus the end-of-turn token when the
        tokenizer knows it (LLaDA ``<|eot_id|>``, Dream ``<|im_end|>``)."""
        eos = getattr(config, "eos_token_id", None)
        ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
        if tokenizer is not None:
            eot = tokenizer.convert_tokens_to_ids(self.end_of_turn_token)
            if isinstance(eot, int) and eot != tokenizer.unk_token_id and eot not in ids:
                ids.append(eot)
        return ids


ADAPTERS: dict[str, ModelAdapter] = {
    "llada": ModelAdapter(
        family="llada",
        model_types=("llada",),
        blocks_path="model.transformer.blocks",
        embed_path="model.transformer.wte",
        head_path="model.transformer.ff_out",
        logits_shift=0,
        end_of_turn_token="<|eot_id|>",
        norm_feeds={"attn_norm": ("q_proj", "k_proj", "v_proj"), "ff_norm": ("ff_proj", "up_proj")},
        up_feeds_down=("up_proj", "ff_out"),
        max_positions_key="max_sequence_length",
    ),
    "dream": ModelAdapter(
        family="dream",
        model_types=("dream",),
        blocks_path="model.layers",
        embed_path="model.embed_tokens",
        head_path="lm_head",
        logits_shift=1,
        end_of_turn_token="<|im_end|>",
        norm_feeds={"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")},
        up_feeds_down=("mlp.up_proj", "mlp.down_proj"),
        max_positions_key="max_position_embeddings",
    ),
}


def max_positions(model_or_config) -> int | None:
    """Positions the model was built for (:meth:`ModelAdapter.max_positions` of its family: LLaDA's
    ``max_sequence_length``, Dream's (Qwen2's) ``max_position_embeddings``); ``None`` when the config does not
    state it. ``ValueError`` for an unsupported family (:func:`get_adapter`)."""
    config = getattr(model_or_config, "config", model_or_config)
    return get_adapter(config).max_positions(config)


def get_adapter(model_or_config) -> ModelAdapter:
    """The adapter for a model (or its config); ``ValueError`` naming the supported families otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = str(getattr(config, "model_type", "")).lower()
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    supported = ", ".join(f"{a.family} (model_type {'/'.join(a.model_types)})" for a in ADAPTERS.values())
    raise ValueError(f"fair_calib_hf does not support model_type {model_type!r}; supported families: {supported}")
