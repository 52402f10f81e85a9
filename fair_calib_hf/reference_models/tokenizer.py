"""Character-level tokenizers for the reference models (built offline with the ``tokenizers`` library).

Ids: the family's special tokens first (below), then ``"\\t"``, ``"\\n"`` and the 95 printable ASCII
characters, one token each; any other character maps to ``<|unk|>``. Encoding adds no special tokens;
decoding concatenates the characters, so ``decode(encode(s)) == s`` for ASCII text.
"""
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHARACTERS = ["\t", "\n"] + [chr(c) for c in range(32, 127)]

SPECIAL_TOKENS = {
    # role -> token, in id order
    "llada": {"eos_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "mask_token": "<|mdm_mask|>",
              "eot_token": "<|eot_id|>", "unk_token": "<|unk|>"},
    "dream": {"eos_token": "<|endoftext|>", "bos_token": "<|beginoftext|>", "mask_token": "<|mask|>",
              "eot_token": "<|im_end|>", "unk_token": "<|unk|>"},
}


def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """The character-level tokenizer of reference family ``kind`` (``"llada"`` or ``"dream"``)."""
    if kind not in SPECIAL_TOKENS:
        raise ValueError(f"unknown reference model kind {kind!r}; allowed: {', '.join(SPECIAL_TOKENS)}")
    specials = SPECIAL_TOKENS[kind]
    vocab = {tok: i for i, tok in enumerate(list(specials.values()) + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=specials["eos_token"],
        pad_token=specials["eos_token"],
        bos_token=specials["bos_token"],
        mask_token=specials["mask_token"],
        unk_token=specials["unk_token"],
        additional_special_tokens=[specials["eot_token"]],
        clean_up_tokenization_spaces=False,
    )
    tok.padding_side = "left"
    return tok
