"""Calibration data through `datasets`: local files with split slicing, save_to_disk folders with a chosen split,
Python lists, chat templates, and the errors for a missing column, empty data, too-short texts, missing files."""
import os

import datasets
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.calibration.data import load_calibration_samples

from conftest import CALIB_TEXTS

CHAT = "{% for m in messages %}<|startoftext|>{{ m['role'] }}:{{ m['content'] }}<|eot_id|>{% endfor %}"


@pytest.fixture(scope="module")
def model_tok(tiny_dirs):
    model = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    return model, tok


def _samples(model, tok, fixed=False, **kw):
    cfg = FairCalibConfig(**{"method": "rtn", "tokenizer": tok, "seq_len": 512, "num_samples": 16, **kw})
    return load_calibration_samples(cfg, model, fixed_length=fixed)


def test_config_fields_validate_and_round_trip():
    cfg = FairCalibConfig(calibration_dataset="wikitext", dataset_config="wikitext-2-raw-v1",
                          dataset_split="train[:64]", apply_chat_template=True)
    again = FairCalibConfig(**cfg.to_dict())
    assert (again.dataset_config, again.dataset_split, again.apply_chat_template) == (
        "wikitext-2-raw-v1", "train[:64]", True)
    for kw, field in ((dict(dataset_split=""), "dataset_split"), (dict(dataset_config=3), "dataset_config"),
                      (dict(apply_chat_template="yes"), "apply_chat_template")):
        with pytest.raises(ValueError, match=field):
            FairCalibConfig(**kw)


def test_local_file_with_split_slicing_and_text_column(model_tok, tmp_path):
    model, tok = model_tok
    path = tmp_path / "d.jsonl"
    datasets.Dataset.from_dict({"body": CALIB_TEXTS}).to_json(str(path), lines=True)
    got = _samples(model, tok, calibration_dataset=str(path), dataset_text_column="body", dataset_split="train[:2]")
    assert [s.tolist() for s in got] == [tok(t)["input_ids"] for t in CALIB_TEXTS[:2]]
    with pytest.raises(ValueError, match=r"no column 'text'.*columns: \['body'\]; "
                                         r"pass FairCalibConfig\(dataset_text_column='body'\)$"):
        _samples(model, tok, calibration_dataset=str(path))


def test_saved_dataset_folder_with_named_split(model_tok, tmp_path):
    model, tok = model_tok
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["train text " * 3]}),
                               "validation": datasets.Dataset.from_dict({"text": CALIB_TEXTS})})
    dd.save_to_disk(str(tmp_path / "saved"))
    got = _samples(model, tok, calibration_dataset=str(tmp_path / "saved"), dataset_split="validation")
    assert len(got) == len(CALIB_TEXTS) and got[0].tolist() == tok(CALIB_TEXTS[0])["input_ids"]


def test_python_list_and_exact_length_sequences_kept_as_they_are(model_tok):
    model, tok = model_tok
    assert len(_samples(model, tok, calibration_dataset=CALIB_TEXTS)) == len(CALIB_TEXTS)
    rows = [list(range(5, 25)), list(range(30, 50))]
    got = _samples(model, tok, fixed=True, calibration_dataset=rows, seq_len=20, num_samples=2)
    assert [g.tolist() for g in got] == rows  # exactly seq_len: used as they are, not concatenated


def test_chat_template(model_tok):
    model, tok = model_tok
    chat_tok = AutoTokenizer.from_pretrained(tok.name_or_path, trust_remote_code=True)
    chat_tok.chat_template = CHAT
    got = _samples(model, chat_tok, calibration_dataset=["hi there"], apply_chat_template=True)
    assert got[0].tolist() == chat_tok("<|startoftext|>user:hi there<|eot_id|>", add_special_tokens=False)["input_ids"]
    messages = [[{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]]
    got = _samples(model, chat_tok, calibration_dataset=datasets.Dataset.from_dict({"text": messages}),
                   apply_chat_template=True)
    assert chat_tok.decode(got[0]) == "<|startoftext|>user:2+2=<|eot_id|><|startoftext|>assistant:4<|eot_id|>"
    with pytest.raises(ValueError, match="has no chat template"):
        _samples(model, tok, calibration_dataset=["hi"], apply_chat_template=True)
    with pytest.raises(ValueError, match="set apply_chat_template=True"):
        _samples(model, tok, calibration_dataset=messages)


def test_errors_empty_short_missing(model_tok, tmp_path):
    model, tok = model_tok
    with pytest.raises(ValueError, match="calibration_dataset"):
        FairCalibConfig(calibration_dataset=[])
    with pytest.raises(ValueError, match="at least one sample"):
        FairCalibConfig(calibration_dataset=datasets.Dataset.from_dict({"text": []}))
    (tmp_path / "header_only.csv").write_text("text\n")
    with pytest.raises(ValueError, match=r"header_only.csv.*(is empty|no data)"):
        _samples(model, tok, calibration_dataset=str(tmp_path / "header_only.csv"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        _samples(model, tok, calibration_dataset=str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match=r"2 samples, the longest 5 tokens\), fewer than seq_len=64"):
        _samples(model, tok, fixed=True, calibration_dataset=["short", "tiny"], seq_len=64)
    with pytest.raises(ValueError, match="does not exist"):
        _samples(model, tok, calibration_dataset=str(tmp_path / "nope.parquet"))
    with pytest.raises(ValueError, match=r"no usable calibration text: all 3 rows read are empty or whitespace only"):
        _samples(model, tok, calibration_dataset=["", "  \n", "\t"])


def test_cli_dataset_errors_are_one_line(tiny_dirs, tmp_path, capsys):
    from fair_calib_hf.cli import main

    path = tmp_path / "d.jsonl"
    datasets.Dataset.from_dict({"body": CALIB_TEXTS}).to_json(str(path), lines=True)
    assert main(["quantize", tiny_dirs["llada"], "--out", str(tmp_path / "o"), "--method", "flatquant",
                 "--dataset", str(path), "--seq-len", "64", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fair-calib quantize: error: calibration dataset ") and err.endswith(
        "has no column 'text' (nor 'input_ids'); columns: ['body']; pass --text-column body")
    assert main(["quantize", tiny_dirs["llada"], "--out", str(tmp_path / "o"), "--method", "flatquant",
                 "--no-progress"]) == 1
    assert "needs calibration data" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_chat_messages_without_chat_template_say_the_fix_in_each_wording(model_tok):
    """The error names apply_chat_template=True in Python and --chat-template in the CLI (not both at once)."""
    from fair_calib_hf_cli import cli_wording

    model, tok = model_tok
    with pytest.raises(ValueError) as err:
        _samples(model, tok, calibration_dataset=[[{"role": "user", "content": "hi"}]])
    assert str(err.value).endswith("set apply_chat_template=True to render it")
    assert cli_wording(str(err.value)).endswith("set --chat-template to render it")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("method", ["rtn", "flatquant"])
def test_blank_rows_are_skipped_with_the_count_in_the_log(tiny_dirs, caplog, kind, dtype, method):
    """wikitext-2-raw and any paragraph .txt file have empty and whitespace-only rows: skipped, counted in the
    log, for every method (rtn included); the samples are those of the text without them."""
    texts = ["", "   ", "\n"] + CALIB_TEXTS[:3]
    cfg = dict(method=method, num_samples=2, seq_len=32, epochs=1)
    with caplog.at_level("WARNING"):
        q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, dtype=dtype,
                                      quantization_config=FairCalibConfig(calibration_dataset=texts, **cfg))
    assert "skipped 3 empty or whitespace-only calibration rows" in caplog.text
    clean = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, dtype=dtype,
                                      quantization_config=FairCalibConfig(calibration_dataset=CALIB_TEXTS[:3], **cfg))
    a, b = q.state_dict(), clean.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_cli_text_file_with_blank_lines(tiny_dirs, tmp_path, capsys, caplog, kind):
    from fair_calib_hf.cli import main

    path = tmp_path / "paragraphs.txt"
    path.write_text("\n\n".join(t.replace("\n", " ") for t in CALIB_TEXTS) + "\n   \n")
    with caplog.at_level("WARNING"):
        assert main(["quantize", tiny_dirs[kind], "--out", str(tmp_path / "o"), "--method", "rtn", "--dataset",
                     str(path), "--seq-len", "64", "--no-progress", "--no-report"]) == 0
    assert "skipped 4 empty or whitespace-only calibration rows (of 8 read)" in caplog.text
    path.write_text("\n  \n\n")
    assert main(["quantize", tiny_dirs[kind], "--out", str(tmp_path / "o2"), "--method", "rtn", "--dataset",
                 str(path), "--seq-len", "64", "--no-progress"]) == 1
    assert "no usable calibration text: all 3 rows read are empty or whitespace only" in capsys.readouterr().err


@pytest.mark.parametrize("encoding, hint", [("latin-1", "0xe9"), ("utf-16", "UTF-16")])
@pytest.mark.parametrize("ext", [".txt", ".jsonl", ".csv"])
def test_non_utf8_file_names_the_file_the_offset_and_the_fix(model_tok, tmp_path, encoding, hint, ext):
    model, tok = model_tok
    text = {".txt": "caf\u00e9 au lait\n", ".jsonl": '{"text": "\u00e9t\u00e9"}\n', ".csv": "text\nd\u00e9j\u00e0\n"}[ext]
    offset = {".txt": 3, ".jsonl": 10, ".csv": 6}[ext] if encoding == "latin-1" else 0
    path = tmp_path / f"data{ext}"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(ValueError) as err:
        _samples(model, tok, calibration_dataset=str(path))
    message = str(err.value)
    assert message.startswith(f"calibration_dataset file {path} is not UTF-8: byte offset {offset} ")
    assert hint in message and "re-encode it as UTF-8" in message and "iconv" in message


def test_non_utf8_file_in_a_data_folder(model_tok, tmp_path):
    model, tok = model_tok
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("fine text\n")
    (tmp_path / "data" / "b.txt").write_bytes("na\u00efve\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"b.txt is not UTF-8: byte offset 2 "):
        _samples(model, tok, calibration_dataset=str(tmp_path / "data"))


def test_no_progress_silences_the_datasets_progress_bars(tiny_dirs, tmp_path, capsys):
    from fair_calib_hf.cli import main

    path = tmp_path / "fresh.txt"  # a file datasets has not cached: its builder runs and would show its bars
    path.write_text("\n".join(CALIB_TEXTS * 2).replace("\n\n", "\n") + f"\n{tmp_path}\n")
    try:
        assert main(["quantize", tiny_dirs["llada"], "--out", str(tmp_path / "o"), "--method", "rtn", "--dataset",
                     str(path), "--seq-len", "64", "--no-progress", "--no-report"]) == 0
        err = capsys.readouterr().err
        assert "Generating train split" not in err and "it/s]" not in err
    finally:
        datasets.enable_progress_bars()
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("method", ["rtn", "quarot", "flatquant", "fair_calib"])
def test_seq_len_beyond_positions_is_refused_for_every_method_before_loading(tiny_dirs, monkeypatch, kind, method):
    from transformers import PreTrainedModel

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded despite a seq_len beyond the model's positions")

    monkeypatch.setattr(PreTrainedModel, "_load_pretrained_model", no_load, raising=False)
    for data in (CALIB_TEXTS, None):
        if data is None and method not in ("rtn", "quarot"):
            continue
        with pytest.raises(ValueError, match=r"sequences of 100000 tokens exceed the model's \d+ positions .*pass "
                                             r"seq_len=\d+ or less"):
            AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=FairCalibConfig(
                method=method, calibration_dataset=data, seq_len=100000, num_samples=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("method", ["rtn", "quarot"])
def test_saved_seq_len_is_the_longest_sequence_used(tiny_dirs, tmp_path, kind, dtype, method):
    """The default seq_len (1024) only caps the whole texts rtn / quarot calibrate on: the quantization_config
    transformers saves records the longest sequence used (the model has 512 positions), not 1024; the caller's
    config keeps its 1024."""
    import json

    tok = AutoTokenizer.from_pretrained(tiny_dirs[kind], trust_remote_code=True)
    longest = max(len(tok(text)["input_ids"]) for text in CALIB_TEXTS)
    config = FairCalibConfig(method=method, calibration_dataset=CALIB_TEXTS)
    before = config.to_dict()
    q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, dtype=dtype, quantization_config=config)
    assert q.config.quantization_config.seq_len == q.hf_quantizer.quantization_config.seq_len == longest < 512
    q.save_pretrained(tmp_path / "q")
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert saved["seq_len"] == longest and saved["method"] == method
    assert config.seq_len == 1024 and config.to_dict() == before
    again = AutoModel.from_pretrained(tmp_path / "q", trust_remote_code=True)
    assert again.config.quantization_config.seq_len == longest
    # the command line: config.json and the report's settings say the same
    from fair_calib_hf.cli import main

    lines = [text.replace("\n", " ") for text in CALIB_TEXTS]
    (tmp_path / "calib.txt").write_text("\n".join(lines))
    longest = max(len(tok(line)["input_ids"]) for line in lines)
    out = tmp_path / "cli"
    assert main(["quantize", tiny_dirs[kind], "--out", str(out), "--method", method, "--dataset",
                 str(tmp_path / "calib.txt"), "--dtype", str(dtype).replace("torch.", ""), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["seq_len"] == longest
    assert json.loads((out / "fair_calib_report.json").read_text())["config"]["seq_len"] == longest


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("method", ["flatquant", "fair_calib"])
def test_stage2_with_too_few_sequences_refuses_or_warns_with_the_number(tiny_dirs, caplog, kind, method):
    from fair_calib_hf.calibration.data import MIN_STAGE2_SEQUENCES

    short = ["12 + 35 = 47; 47 * 2 = 94; 94 - 9 = 85. ok"]  # 44 characters: one sequence of 32 tokens
    cfg = dict(method=method, seq_len=32, epochs=1, n_probe=2, probe_batch_size=2, probe_steps=8)
    with pytest.raises(ValueError, match=rf"fills 1 sequence of 32 tokens, fewer than num_samples=128.*at least "
                                         rf"{MIN_STAGE2_SEQUENCES}.*pass more text, a smaller seq_len, or "
                                         r"num_samples=1"):
        AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=FairCalibConfig(
            calibration_dataset=short, num_samples=128, **cfg))
    rows = [list(range(5 + i, 37 + i)) for i in range(MIN_STAGE2_SEQUENCES)]
    with caplog.at_level("WARNING"):
        AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=FairCalibConfig(
            calibration_dataset=rows, num_samples=128, **cfg))
    assert f"Stage II fits on {MIN_STAGE2_SEQUENCES} calibration sequences of 32 tokens, not the 128 asked" in caplog.text
