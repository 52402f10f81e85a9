"""push_to_hub goes through save_pretrained: intercept the upload and check what would be uploaded."""
import io
import json
import os

import huggingface_hub
import pytest
import torch
import transformers.utils.hub as hf_hub_utils
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig


class _Repo:
    def __init__(self, repo_id):
        self.repo_id = repo_id

    def __str__(self):
        return f"https://huggingface.co/{self.repo_id}"


def _read(op):
    src = op.path_or_fileobj
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    if isinstance(src, io.IOBase):
        return src.read()
    with open(src, "rb") as f:
        return f.read()


@pytest.fixture
def uploads(monkeypatch):
    """Capture create_commit calls (both transformers lines: 4.57 calls module-level functions, 5.x an
    HfApi instance) instead of reaching the network."""
    captured = {}

    def create_commit(*args, repo_id=None, operations=(), **kwargs):
        repo_id = repo_id or args[0]
        captured.update({op.path_in_repo: _read(op) for op in operations})
        captured["__repo_id__"] = repo_id
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="",
                                          commit_description="", oid="0" * 40) if hasattr(huggingface_hub, "CommitInfo") else None

    def create_repo(*args, repo_id=None, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id or args[0]}")

    def no_card(*args, **kwargs):
        raise EntryNotFoundError("no model card yet")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", lambda self, *a, **k: create_commit(*a, **k))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: create_repo(*a, **k))
    for name, fn in (("create_commit", create_commit), ("create_repo", create_repo)):
        if hasattr(hf_hub_utils, name):
            monkeypatch.setattr(hf_hub_utils, name, fn)
    monkeypatch.setattr(huggingface_hub.ModelCard, "load", no_card)
    return captured


def test_push_to_hub_uploads_the_packed_checkpoint(tiny_dirs, uploads):
    q = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="rtn"))
    q.push_to_hub("someone/tiny-llada-w4a4")
    assert uploads["__repo_id__"] == "someone/tiny-llada-w4a4"
    files = set(uploads) - {"__repo_id__"}
    assert {"config.json", "model.safetensors", "modeling_llada.py", "configuration_llada.py", "README.md"} <= files
    assert not any(f.endswith(".bin") for f in files)
    cfg = json.loads(uploads["config.json"])
    assert cfg["quantization_config"]["quant_method"] == "fair_calib"
    sd = load(uploads["model.safetensors"])
    assert torch.equal(sd["model.transformer.blocks.0.ff_out.weight_packed"],
                       q.model.transformer.blocks[0].ff_out.packed_weight())
    assert "fair_calib" in uploads["README.md"].decode()  # model-card tag


def test_reference_dream_reproduces_the_upstream_generation_config(tiny_dirs, tmp_path):
    """The behaviour the plugin must survive: the float model, loaded as the real remote code loads it, cannot
    be saved by plain transformers."""
    fp = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True)
    assert type(fp.generation_config).__name__ == "DreamGenerationConfig" and fp.can_generate()
    with pytest.raises(TypeError, match="strict"):
        fp.save_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_quantize_save_push_reload_with_the_upstream_remote_code_behaviour(tiny_dirs, uploads, tmp_path, kind):
    q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="rtn"))
    config = getattr(q, "generation_config", None)  # LLaDA's remote code cannot generate (5.x: no attribute)
    config_class = type(config)
    ids = torch.randint(5, 90, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = q(input_ids=ids).logits
    q.save_pretrained(tmp_path / "saved")
    q.push_to_hub(f"someone/tiny-{kind}-w4a4")
    # the user's generation config is the same object, of the same class, afterwards
    assert getattr(q, "generation_config", None) is config and type(config) is config_class
    files = set(uploads) - {"__repo_id__"}
    assert {"config.json", "model.safetensors", "README.md", "fair_calib_loader.py"} <= files
    assert json.loads(uploads["config.json"])["auto_map"]["AutoModel"].startswith("fair_calib_loader.")
    if kind == "dream":
        assert json.loads(uploads["generation_config.json"])["steps"] == config.steps
        with pytest.raises(TypeError, match="strict"):  # validate itself is unchanged outside the save
            config.validate(strict=True)
    for folder in (tmp_path / "saved", tmp_path / "resaved"):
        again = AutoModel.from_pretrained(str(folder), trust_remote_code=True)
        with torch.no_grad():
            assert torch.equal(again(input_ids=ids).logits, out)
        if kind == "dream":
            assert type(again.generation_config).__name__ == "DreamGenerationConfig"
        if folder.name == "saved":
            again.save_pretrained(tmp_path / "resaved")  # a reloaded quantized model saves too


def test_a_copy_of_a_quantized_model_saves_its_own_weights(tiny_dirs, tmp_path):
    import copy

    from safetensors.torch import load_file

    q = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="rtn"))
    twin = copy.deepcopy(q)
    with torch.no_grad():
        twin.model.embed_tokens.weight.add_(1.0)
    twin.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(saved, twin.model.embed_tokens.weight) and not torch.equal(saved, q.model.embed_tokens.weight)


def test_remote_code_without_a_parallel_plan_loads(tiny_dirs):
    """The real LLaDA remote code never calls post_init, so ``model.tp_plan`` is None; transformers 5.x hands
    it to the quantizer's ``update_parallel_plan`` on every load."""
    from fair_calib_hf.quantizer import FairCalibHfQuantizer

    model = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    FairCalibHfQuantizer(FairCalibConfig(method="rtn")).update_parallel_plan(model, None)


def _fake_hub_cache(root, repo_id, revisions):
    """A hub cache folder as huggingface_hub lays it out: ``refs/<name>`` holds a commit, ``snapshots/<commit>``
    that revision's files. ``revisions``: ``{name: (commit, folder to copy)}``."""
    import shutil

    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    for name, (commit, folder) in revisions.items():
        (repo / "refs" / name).write_text(commit)
        shutil.copytree(folder, repo / "snapshots" / commit)
    return repo


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_hub_options_reach_the_config_and_tokenizer_the_plugin_reads(tiny_dirs, tmp_path, monkeypatch, kind, dtype):
    """A repo whose main is GPTQ-quantized (with another tokenizer) and whose revision v2 is the float model,
    present only in a hub cache: revision / cache_dir / token / local_files_only given to from_pretrained reach
    the plugin's own config.json read and the tokenizer load for text calibration data (no network)."""
    import shutil

    from huggingface_hub import constants
    from transformers import AutoTokenizer

    other = "dream" if kind == "llada" else "llada"
    main = tmp_path / "main"
    shutil.copytree(tiny_dirs[kind], main)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_dirs[other], name), main / name)  # main's tokenizer is another one
    cfg = json.loads((main / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (main / "config.json").write_text(json.dumps(cfg))
    cache = tmp_path / "cache"
    _fake_hub_cache(cache, "someone/tiny", {"main": ("a" * 40, main), "v2": ("b" * 40, tiny_dirs[kind])})

    loads = []
    real = AutoTokenizer.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        tokenizer = real(cls, *args, **kwargs)
        loads.append((kwargs, tokenizer.bos_token))
        return tokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(spy))
    bos = {"llada": "<|startoftext|>", "dream": "<|beginoftext|>"}[kind]
    config = FairCalibConfig(method="rtn", calibration_dataset=["hello there, world"] * 2, seq_len=64)
    # the default cache: main's config.json says gptq, v2 is what is loaded
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    q = AutoModel.from_pretrained("someone/tiny", revision="v2", local_files_only=True, trust_remote_code=True,
                                  dtype=dtype, quantization_config=config)
    assert q.is_quantized and loads[-1][1] == bos and loads[-1][0]["revision"] in ("v2", "b" * 40)
    # a custom cache_dir, and a token: the repo is nowhere else
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    q = AutoModel.from_pretrained("someone/tiny", revision="v2", cache_dir=str(cache), local_files_only=True,
                                  token="hf_not_a_real_token", trust_remote_code=True, dtype=dtype,
                                  quantization_config=config)
    kwargs, seen = loads[-1]
    assert q.is_quantized and seen == bos
    assert kwargs["cache_dir"] == str(cache) and kwargs["token"] == "hf_not_a_real_token"
    assert kwargs["local_files_only"] is True and kwargs["revision"] in ("v2", "b" * 40)
    # the same read, by revision: main is GPTQ, v2 is float
    from fair_calib_hf.checkpoint import foreign_quantization

    assert foreign_quantization("someone/tiny", {"cache_dir": str(cache)}) == "gptq"
    assert foreign_quantization("someone/tiny", {"cache_dir": str(cache), "revision": "v2"}) is None
