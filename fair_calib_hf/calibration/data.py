"""Calibration data → a list of token-id sequences.

Accepted inputs (``FairCalibConfig.calibration_dataset``):

* a list of strings, tokenized with the config's tokenizer or the model's own (``AutoTokenizer`` on the
  model's path);
* a list of token-id sequences (lists of ints or 1-D integer tensors);
* a ``datasets.Dataset`` with ``input_ids`` or a text column (``dataset_text_column``);
* a string: a local file (``.txt``, ``.json``, ``.jsonl``, ``.csv``, ``.parquet``), a local folder (a
  ``save_to_disk`` dataset or a folder of data files) or a hub dataset id, read with ``datasets`` (configuration
  ``dataset_config``, split ``dataset_split``, column ``dataset_text_column``);
* with ``apply_chat_template``, texts become one user turn each and chat-message lists are rendered with the
  tokenizer's chat template (instruct models).

Rows that are empty or whitespace only (``None`` in a dataset column, an empty token list), as wikitext-2-raw and
any paragraph ``.txt`` file have, are skipped and counted in the log; only data with no usable row is refused.

Errors name the problem: a missing file, a local text file that is not UTF-8 (with the byte offset and how to
re-encode it), an unknown column (listing the columns), an empty dataset, no usable row, token ids outside the
vocabulary, or too little text for one ``seq_len`` sequence in fixed-length mode.

Variable-length mode (``rtn``, ``quarot``): the first ``num_samples`` usable samples, each truncated to
``seq_len`` tokens. Fixed-length mode (Stage II methods, which need fully observed sequences of exactly
``seq_len`` tokens for the position prior): samples that all have exactly ``seq_len`` tokens are used as they
are (the first ``num_samples``; this keeps a prompt/answer layout aligned with the prior's window, as for the
zoo tasks' ``calibration_sequences``); otherwise the samples are concatenated (an EOS token between them when
the model config has one) and cut into ``num_samples`` consecutive sequences of ``seq_len`` tokens.
"""
from __future__ import annotations

import codecs
import logging
import os

import torch

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_TEXT_FORMATS = (".txt", ".json", ".jsonl", ".csv")
"""The formats ``datasets`` reads as UTF-8 text (a decoding error surfaces as ``DatasetGenerationError``)."""


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or os.path.splitext(name)[1].lower() in _FILE_BUILDERS
            or os.sep + os.sep in name)


def check_utf8(path: str) -> None:
    """``ValueError`` when the file at ``path`` is not valid UTF-8: the file, the byte offset of the first byte that
    cannot be decoded, a UTF-16 byte-order mark when there is one, and how to re-encode the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        head = handle.read(2)
        handle.seek(0)
        while True:
            chunk = handle.read(1 << 20)
            pending = decoder.getstate()[0]  # bytes of a character cut by the previous chunk
            data = pending + chunk  # what this decode call sees; data[0] is at offset - len(pending)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                utf16 = head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
                what = ("it starts with a UTF-16 byte-order mark: the file is UTF-16" if utf16 else
                        f"byte 0x{data[err.start]:02x} does not start a valid UTF-8 character; Latin-1 or "
                        "Windows-1252 text?")
                stem, ext = os.path.splitext(path)
                raise ValueError(
                    f"calibration_dataset file {path} is not UTF-8: byte offset {offset - len(pending) + err.start} "
                    f"({what}); re-encode it as UTF-8, e.g. iconv -f {'UTF-16' if utf16 else 'LATIN1'} -t UTF-8 "
                    f"{path} > {stem}.utf8{ext}") from None
            if not chunk:
                return
            offset += len(chunk)


def _load_named_dataset(name: str, config_name: str | None = None, split: str = "train"):
    """A local file, a local folder (``save_to_disk`` output or data files) or a hub dataset, as a
    ``datasets.Dataset``; ``ValueError`` naming the dataset on any failure."""
    import datasets

    path = os.path.expanduser(name)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise ValueError(
                f"calibration_dataset file {name!r}: unsupported extension {ext!r}; "
                f"supported: {', '.join(sorted(_FILE_BUILDERS))}"
            )
        if ext in _TEXT_FORMATS:
            check_utf8(path)
        loader = lambda: datasets.load_dataset(_FILE_BUILDERS[ext], data_files=path, split=split)  # noqa: E731
    elif os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "dataset_info.json")) or os.path.isfile(os.path.join(path, "state.json")):
            def loader():
                ds = datasets.load_from_disk(path)
                return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            for root, _, names in os.walk(path):
                for file in sorted(names):
                    if os.path.splitext(file)[1].lower() in _TEXT_FORMATS:
                        check_utf8(os.path.join(root, file))
            loader = lambda: datasets.load_dataset(path, config_name, split=split)  # noqa: E731
    elif _looks_like_path(name):
        raise ValueError(f"calibration_dataset {name!r} does not exist (no such file or folder)")
    else:
        loader = lambda: datasets.load_dataset(name, config_name, split=split)  # noqa: E731
    try:
        return loader()
    except ValueError as err:
        raise ValueError(f"could not load calibration dataset {name!r} (config={config_name!r}, split={split!r}): "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    except Exception as err:  # noqa: BLE001 - hub / network / format errors: one clear line naming the dataset
        raise ValueError(f"could not load calibration dataset {name!r} (config={config_name!r}, split={split!r}): "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def _samples_from_dataset(ds, text_column: str, name: str = "calibration dataset"):
    if len(ds) == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if "input_ids" in ds.column_names:
        return list(ds["input_ids"])
    if text_column not in ds.column_names:
        texts = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        column = texts[0] if len(texts) == 1 else "<one of them>"
        raise ValueError(f"{name} has no column {text_column!r} (nor 'input_ids'); columns: {ds.column_names}; "
                         f"pass FairCalibConfig(dataset_text_column={column!r})")
    return list(ds[text_column])


def _is_messages(item) -> bool:
    return isinstance(item, (list, tuple)) and len(item) > 0 and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in item)


def _render_chat(tokenizer, item, index: int) -> list[int]:
    """Token ids of a text (one user turn) or a list of chat messages rendered with the chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("apply_chat_template=True but the tokenizer has no chat template; set the tokenizer's "
                         "chat_template or calibrate on plain text (apply_chat_template=False)")
    messages = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _tokenizer_for(model, tokenizer, hub_options: dict | None = None):
    if tokenizer is not None:
        return tokenizer
    from transformers import AutoTokenizer

    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not path:
        raise ValueError("calibration_dataset holds strings but no tokenizer was given and the model has no path; "
                         "pass FairCalibConfig(tokenizer=...)")
    # a model loaded through remote code was already trusted by the user; its tokenizer may need the same
    trusted = type(model).__module__.startswith("transformers_modules")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trusted, **(hub_options or {}))
    except Exception as err:  # noqa: BLE001 - KeyError/ValueError/OSError, depending on what the folder lacks
        raise ValueError(
            f"calibration_dataset holds text, but no tokenizer could be loaded from {path} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); pass one with "
            "FairCalibConfig(tokenizer=AutoTokenizer.from_pretrained(...)), or give the calibration data as "
            "token-id sequences instead of text") from err


def _chunk(samples: list[torch.Tensor], config, eos) -> list[torch.Tensor]:
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    parts = []
    for ids in samples:
        parts.append(ids)
        if eos is not None:
            parts.append(torch.tensor([int(eos)]))
    stream = torch.cat(parts)
    count = min(config.num_samples, stream.numel() // config.seq_len)
    if count == 0:
        longest = max(int(ids.numel()) for ids in samples)
        raise ValueError(
            f"calibration data has {stream.numel()} tokens in all ({len(samples)} samples, the longest "
            f"{longest} tokens), fewer than seq_len={config.seq_len} needed for one calibration sequence; "
            "pass more text or a smaller seq_len"
        )
    return list(stream[: count * config.seq_len].reshape(count, config.seq_len))


MIN_STAGE2_SEQUENCES = 8
"""Stage II (``flatquant``, ``fair_calib``) refuses to fit on fewer than ``min(num_samples, MIN_STAGE2_SEQUENCES)``
calibration sequences: the learned transforms and clipping of a block fitted on one or two sequences follow
those sequences, and the fit costs as much time as a full one. Between that and ``num_samples`` it warns."""


def check_stage2_count(samples: list[torch.Tensor], config) -> None:
    """Refuse (``ValueError``) or warn about fewer Stage II calibration sequences than ``num_samples`` asked, as
    :data:`MIN_STAGE2_SEQUENCES` says, with the number found and the fix."""
    found, asked = len(samples), config.num_samples
    if found >= asked:
        return
    length = int(samples[0].numel()) if samples else config.seq_len
    what = (f"calibration data fills {found} sequence{'s' if found != 1 else ''} of {length} tokens, fewer than "
            f"num_samples={asked}")
    if found < min(asked, MIN_STAGE2_SEQUENCES):
        raise ValueError(f"{what}; Stage II (method={config.method!r}) needs at least "
                         f"{min(asked, MIN_STAGE2_SEQUENCES)}: pass more text, a smaller seq_len, or "
                         f"num_samples={found} to calibrate on {'it' if found == 1 else 'them'} knowingly")
    logger.warning("fair_calib: WARNING: Stage II fits on %d calibration sequences of %d tokens, not the %d asked "
                   "(num_samples): its transforms follow fewer sequences; pass more text or a smaller seq_len",
                   found, length, asked)


def load_calibration_samples(config, model, fixed_length: bool = False,
                             hub_options: dict | None = None) -> list[torch.Tensor]:
    """The calibration sequences as 1-D ``int64`` tensors: at most ``num_samples``, each ≤ ``seq_len``
    tokens, or exactly ``seq_len`` tokens each in ``fixed_length`` mode (see the module docstring); fewer when
    the data holds fewer (the caller decides: :func:`check_stage2_count`). ``ValueError`` for data that cannot be
    read or holds no usable row. Text is tokenized with ``config.tokenizer``, else the model's own, loaded with
    ``hub_options`` (the ``revision`` / ``cache_dir`` / ... of the model's load, :mod:`fair_calib_hf.hub`)."""
    data = config.calibration_dataset
    if data is None:
        return []
    split = getattr(config, "dataset_split", "train")
    if isinstance(data, str):
        data = _samples_from_dataset(_load_named_dataset(data, getattr(config, "dataset_config", None), split),
                                     config.dataset_text_column, f"calibration dataset {data!r} (split {split!r})")
    elif hasattr(data, "column_names"):  # a datasets.Dataset
        data = _samples_from_dataset(data, config.dataset_text_column)
    elif isinstance(data, dict):  # a DatasetDict
        if split not in data:
            raise ValueError(f"calibration dataset has no split {split!r}; splits: {sorted(data)}")
        data = _samples_from_dataset(data[split], config.dataset_text_column)
    chat = bool(getattr(config, "apply_chat_template", False))
    samples = []
    tokenizer = None
    needed = config.num_samples * config.seq_len if fixed_length else None
    total = 0
    blank = read = 0
    for index, item in enumerate(data):
        if (not fixed_length and len(samples) == config.num_samples) or (fixed_length and total >= needed):
            break
        read += 1
        if item is None or (isinstance(item, str) and not item.strip()):
            blank += 1
            continue
        if chat and (isinstance(item, str) or _is_messages(item)):
            tokenizer = tokenizer or _tokenizer_for(model, config.tokenizer, hub_options)
            ids = torch.tensor(_render_chat(tokenizer, item, index), dtype=torch.long)
        elif isinstance(item, str):
            tokenizer = tokenizer or _tokenizer_for(model, config.tokenizer, hub_options)
            ids = torch.tensor(tokenizer(item)["input_ids"], dtype=torch.long)
        elif _is_messages(item):
            raise ValueError(f"calibration sample {index} is a list of chat messages; set apply_chat_template=True "
                             "to render it")
        elif isinstance(item, torch.Tensor) or (isinstance(item, (list, tuple)) and all(isinstance(t, int) for t in item)):
            if chat:
                raise ValueError(f"calibration sample {index} is already tokenized; apply_chat_template needs texts "
                                 "or chat messages")
            ids = torch.as_tensor(item)
            if ids.dim() != 1 or ids.is_floating_point():
                raise ValueError(f"calibration sample {index}: expected a 1-D sequence of token ids, got {ids.dtype} {list(ids.shape)}")
            ids = ids.long()
        else:
            raise ValueError(
                f"calibration sample {index}: expected a string or a sequence of token ids, got {type(item).__name__}"
            )
        if ids.numel() == 0:
            blank += 1
            continue
        vocab = model.get_input_embeddings().num_embeddings
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"calibration sample {index} has token ids outside [0, {vocab})")
        samples.append(ids if fixed_length else ids[: config.seq_len])
        total += ids.numel()
    if not samples:
        raise ValueError(f"no usable calibration text: all {read} rows read are empty or whitespace only"
                         if read else "calibration_dataset yielded no samples")
    if blank:
        logger.warning("fair_calib: skipped %d empty or whitespace-only calibration rows (of %d read)", blank, read)
    if fixed_length:
        if all(ids.numel() == config.seq_len for ids in samples):
            return samples[: config.num_samples]
        return _chunk(samples, config, getattr(model.config, "eos_token_id", None))
    return samples
