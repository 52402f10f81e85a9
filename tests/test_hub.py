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
    monkeypatch.setattr(hf_hub_utils, "TRANSFORMERS_CACHE", str(cache), raising=False)  # 4.57's own copy
    q = AutoModel.from_pretrained("someone/tiny", revision="v2", local_files_only=True, trust_remote_code=True,
                                  dtype=dtype, quantization_config=config)
    assert q.is_quantized and loads[-1][1] == bos and loads[-1][0]["revision"] in ("v2", "b" * 40)
    # a custom cache_dir, and a token: the repo is nowhere else
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hf_hub_utils, "TRANSFORMERS_CACHE", str(tmp_path / "empty"), raising=False)
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


def _with_code_at_root(folder, checkpoint, subfolder):
    """A repo layout with the checkpoint under ``subfolder`` and its remote code also at the root (transformers
    looks remote code up at the root, whatever the subfolder)."""
    import shutil

    shutil.copytree(checkpoint, folder / subfolder)
    for name in os.listdir(checkpoint):
        if name.endswith(".py"):
            shutil.copy(os.path.join(checkpoint, name), folder / name)
    return folder


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_cli_hub_options_reach_every_file_read(tiny_dirs, tmp_path, monkeypatch, capsys, kind, dtype):
    """--revision / --cache-dir / --local-files-only / --subfolder / --token on quantize, probe, eval and inspect:
    a repo present only in a custom cache dir, whose main is GPTQ-quantized with another tokenizer and whose v2
    holds the float checkpoint under sub/, quantizes through the CLI (no network); the tokenizer, config and
    weights all come from v2/sub; the token reaches the hub reads and is printed or written nowhere."""
    import hashlib
    import shutil

    from huggingface_hub import constants
    from transformers import AutoConfig, AutoTokenizer

    from fair_calib_hf.cli import main

    other = "dream" if kind == "llada" else "llada"
    main_rev = _with_code_at_root(tmp_path / "main", tiny_dirs[kind], "sub")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_dirs[other], name), main_rev / "sub" / name)  # main's tokenizer is another
    cfg = json.loads((main_rev / "sub" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (main_rev / "sub" / "config.json").write_text(json.dumps(cfg))
    v2 = _with_code_at_root(tmp_path / "v2", tiny_dirs[kind], "sub")
    cache = tmp_path / "cache"

    def commit(name):  # transformers keeps remote code per repo and commit: one commit per test case
        return hashlib.sha1(f"{kind}-{dtype}-{name}".encode()).hexdigest()

    _fake_hub_cache(cache, "someone/tiny", {"main": (commit("main"), main_rev), "v2": (commit("v2"), v2)})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))  # the repo is only in --cache-dir
    monkeypatch.setattr(hf_hub_utils, "TRANSFORMERS_CACHE", str(tmp_path / "empty"), raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_env_token_never_shown")
    token = "hf_cli_token_never_shown"

    seen = []
    for cls in (AutoTokenizer, AutoConfig):
        def spy(klass, *args, _real=cls.from_pretrained.__func__, **kwargs):
            seen.append((klass.__name__, kwargs))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    data = tmp_path / "calib.txt"
    data.write_text("hello there, world\n12 + 35 = 47\n")
    hub = ["--revision", "v2", "--subfolder", "sub", "--cache-dir", str(cache), "--local-files-only"]

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, err
        assert token not in out + err and "hf_env_token_never_shown" not in out + err
        return out

    out = tmp_path / "q"
    run("quantize", "someone/tiny", *hub, "--token", token, "--trust-remote-code", "--out", str(out), "--method",
        "rtn", "--dataset", str(data), "--seq-len", "32", "--num-samples", "2", "--dtype", dtype, "--no-progress")
    assert {name for name, _ in seen} >= {"AutoTokenizer"} and all(
        kw.get("revision") == "v2" and kw.get("subfolder") == "sub" and kw.get("token") == token
        and kw.get("cache_dir") == str(cache) and kw.get("local_files_only") for _, kw in seen), seen
    saved = json.loads((out / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "fair_calib"
    bos = {"llada": "<|startoftext|>", "dream": "<|beginoftext|>"}[kind]
    assert AutoTokenizer.from_pretrained(str(out)).bos_token == bos  # v2's tokenizer, not main's
    for root, _, names in os.walk(out):
        for name in names:
            assert token.encode() not in open(os.path.join(root, name), "rb").read(), name
    # the token from HF_TOKEN by default, as huggingface_hub reads it
    run("probe", "someone/tiny", *hub, "--trust-remote-code", "--out", str(tmp_path / "prior.safetensors"),
        "--dataset", str(data), "--seq-len", "32", "--num-samples", "2", "--n-probe", "2", "--probe-steps", "4",
        "--dtype", dtype, "--no-progress")
    assert (tmp_path / "prior.safetensors").is_file()
    # the quantized checkpoint as revision v1 of another repo, under sub/: inspect and eval read it from the cache
    _fake_hub_cache(cache, "someone/tiny-w4a4", {"v1": (commit("v1"), _with_code_at_root(tmp_path / "v1", out, "sub"))})
    stdout = run("inspect", "someone/tiny-w4a4", "--revision", "v1", "--subfolder", "sub", "--cache-dir", str(cache),
                 "--local-files-only", "--token", token)
    assert "layout         matches the quantization_config" in stdout
    stdout = run("eval", "someone/tiny-w4a4", "--revision", "v1", "--subfolder", "sub", "--cache-dir", str(cache),
                 "--local-files-only", "--token", token, "--task", "arith", "--count", "2", "--frontier-count", "2",
                 "--teacher", tiny_dirs[kind], "--trust-remote-code", "--dtype", dtype, "--no-progress")
    assert "accuracy" in stdout and "frontier" in stdout
    # a revision of a local folder would be ignored by transformers: refused, in the command line's words
    assert main(["quantize", tiny_dirs[kind], "--revision", "v2", "--out", str(tmp_path / "r"), "--method", "rtn"]) == 1
    assert "--revision v2 applies to a hub id" in capsys.readouterr().err
    # the same repo through the Python route (FairCalibQuantizer): its checks read v2/sub too
    from fair_calib_hf.optimum_quantizer import FairCalibQuantizer

    quantizer = FairCalibQuantizer.from_pretrained("someone/tiny", revision="v2", subfolder="sub",
                                                   cache_dir=str(cache), local_files_only=True,
                                                   trust_remote_code=True, dtype=getattr(torch, dtype))
    folder = quantizer.quantize(tmp_path / "py", quantization_config=FairCalibConfig(method="rtn"), report=False)
    assert AutoTokenizer.from_pretrained(folder).bos_token == bos
