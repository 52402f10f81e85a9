"""Which modules get quantized: every ``nn.Linear`` inside the transformer blocks, minus the skip list.

Skip rules match **full module paths** (exact), or full-match regular expressions written ``"re:<regex>"``.
Suffix or substring rules are deliberately not supported: in LLaDA the LM head is
``model.transformer.ff_out`` while every block's MLP down-projection is ``...blocks.{i}.ff_out``.
Embeddings, norms and the LM head live outside the blocks and are never converted.
"""
from __future__ import annotations

import re

from torch import nn



def is_skipped(name: str, skip: list[str] | None) -> bool:
    """Whether full module path ``name`` matches a skip rule (exact path or ``re:`` full match)."""
    for rule in skip or ():
        if rule.startswith("re:"):
            if re.fullmatch(rule[3:], name):
                return True
        elif rule == name:
            return True
    return False


def block_targets(block: nn.Module, block_path: str, skip: list[str] | None):
    """``[(full path, module)]`` of the linears to convert inside one block (``block_path`` is its full
    path), in module order; already packed modules are listed too, so the list is stable across conversion."""
    from .modules import PackedLinear

    return [
        (name, module)
        for name, module in block.named_modules(prefix=block_path)
        if isinstance(module, (nn.Linear, PackedLinear)) and not is_skipped(name, skip)
    ]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at full path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
