"""Character-level tokenizers for the reference models, built offline with the ``tokenizers`` library.

Vocabulary (ids in this order): the family's special tokens (table below), then ``"\\t"``, ``"\\n"`` and the
95 printable ASCII characters ``" "`` .. ``"~"``, one token each (97 + 5 = 102 tokens). Any other character
encodes to the unk token.

======  ===================  ===================
 id      LLaDA                Dream
======  ===================  ===================
 0       ``<|endoftext|>``    ``<|endoftext|>``    eos = pad
 1       ``<|startoftext|>``  ``<|beginoftext|>``  bos
 2       ``<|mdm_mask|>``     ``<|mask|>``         mask
 3       ``<|eot_id|>``       ``<|im_end|>``       end of turn (an additional special token)
 4       ``<|unk|>``          ``<|unk|>``          unk
======  ===================  ===================

* Encoding adds **no** special tokens (no BOS, no EOS), with or without ``add_special_tokens``; special
  tokens written in the text (``"<|eot_id|>"``) are recognised as one token.
* Decoding concatenates the characters (``decoders.Fuse``; no spaces are inserted and no clean-up is done), so
  ``decode(encode(s)) == s`` for any text made of printable ASCII, tab and newline.
* ``padding_side`` is ``"left"`` (what the diffusion samplers expect for batched prompts); it is saved.

:func:`save_tokenizer` writes files that both transformers 4.57 and 5.x load (``AutoTokenizer.from_pretrained``).
Note that 5.x's ``AutoTokenizer`` first loads the folder's ``config.json``, whose ``auto_map`` points to remote
code: as with the real checkpoints, pass ``trust_remote_code=True`` there to avoid the interactive prompt.
"""
import json
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHARACTERS = ["\t", "\n"] + [chr(c) for c in range(32, 127)]

# role -> token, in id order
SPECIAL_TOKENS = {
    "llada": {"eos_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "mask_token": "<|mdm_mask|>",
              "eot_token": "<|eot_id|>", "unk_token": "<|unk|>"},
    "dream": {"eos_token": "<|endoftext|>", "bos_token": "<|beginoftext|>", "mask_token": "<|mask|>",
              "eot_token": "<|im_end|>", "unk_token": "<|unk|>"},
}

VOCAB_LEN = len(SPECIAL_TOKENS["llada"]) + len(CHARACTERS)  # 102, the same for both families


def special_token_ids(kind: str) -> dict:
    """``{"eos_token_id", "pad_token_id", "bos_token_id", "mask_token_id", "eot_token_id", "unk_token_id"}``."""
    roles = list(_specials(kind))
    ids = {f"{role}_id": index for index, role in enumerate(roles)}
    ids["pad_token_id"] = ids["eos_token_id"]
    return ids


def _specials(kind: str) -> dict:
    if kind not in SPECIAL_TOKENS:
        raise ValueError(f"unknown reference model kind {kind!r}; allowed: {', '.join(SPECIAL_TOKENS)}")
    return SPECIAL_TOKENS[kind]


def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """The character-level tokenizer of reference family ``kind`` (``"llada"`` or ``"dream"``)."""
    specials = _specials(kind)
    vocab = {token: index for index, token in enumerate(list(specials.values()) + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials.values()])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=specials["eos_token"],
        pad_token=specials["eos_token"],
        bos_token=specials["bos_token"],
        mask_token=specials["mask_token"],
        unk_token=specials["unk_token"],
        additional_special_tokens=[specials["eot_token"]],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )


def save_tokenizer(kind: str, path) -> None:
    """Save :func:`build_tokenizer` ``(kind)`` to ``path`` in a form both transformers lines load.

    transformers 5.x writes ``"tokenizer_class": "TokenizersBackend"`` and a list-valued ``extra_special_tokens``,
    neither of which 4.x understands; both are rewritten to the names both lines read
    (``PreTrainedTokenizerFast``, ``additional_special_tokens``). On 4.x the rewrite changes nothing."""
    build_tokenizer(kind).save_pretrained(str(path))
    config_path = os.path.join(str(path), "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        config.pop("extra_special_tokens")
        config["additional_special_tokens"] = list(dict.fromkeys(config.get("additional_special_tokens", []) + extra))
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")
