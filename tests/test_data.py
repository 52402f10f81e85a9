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
    with pytest.raises(ValueError, match="calibration sample 0 is empty"):
        _samples(model, tok, calibration_dataset=[""])


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
