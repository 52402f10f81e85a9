"""No silent mis-load: a saved quantized checkpoint loads correctly in a fresh process that never imports
fair_calib_hf (its ``auto_map`` goes through the loader module written by the save), and fails with an
``ImportError`` saying ``pip install fair_calib_hf`` where the package is missing."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.saving import LOADER_FILE

KINDS = ("llada", "dream")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = """
import sys, torch
from transformers import AutoModel
torch.set_num_threads(int(sys.argv[1]))  # the parent's: fp32 sums, hence logits, depend on the thread count
for path, ids_path in zip(sys.argv[2::2], sys.argv[3::2]):
    model = AutoModel.from_pretrained(path, trust_remote_code=True)
    with torch.no_grad():
        torch.save(model(input_ids=torch.load(ids_path)).logits, ids_path + ".out")
    print("imported fair_calib_hf:", "fair_calib_hf" in sys.modules)
"""
HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fair_calib_hf" or name.startswith("fair_calib_hf."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Hide())
"""


@pytest.fixture(scope="module")
def saved(tiny_dirs, tmp_path_factory):
    """Per family: (saved folder, input ids file, in-process logits); ``out["threads"]``: the thread count
    the logits were computed with (earlier tests may have changed it)."""
    out = {"threads": str(torch.get_num_threads())}
    for kind in KINDS:
        q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True,
                                      quantization_config=FairCalibConfig(method="rtn"))
        folder = tmp_path_factory.mktemp(f"q-{kind}")
        q.save_pretrained(folder / "model")
        ids = torch.randint(5, 90, (1, 10), generator=torch.Generator().manual_seed(1))
        torch.save(ids, folder / "ids.pt")
        with torch.no_grad():
            out[kind] = (str(folder / "model"), str(folder / "ids.pt"), q(input_ids=ids).logits)
    return out


def _run(code, args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT)


def test_the_saved_folder_routes_auto_classes_through_the_loader(saved):
    for kind in KINDS:
        folder = saved[kind][0]
        auto_map = json.load(open(os.path.join(folder, "config.json")))["auto_map"]
        assert auto_map["AutoModel"].startswith("fair_calib_loader.")
        assert auto_map["AutoModelForCausalLM"].startswith("fair_calib_loader.")
        assert not auto_map["AutoConfig"].startswith("fair_calib_loader.")
        assert "pip install fair_calib_hf" in open(os.path.join(folder, LOADER_FILE)).read()


def test_a_fresh_process_without_the_import_loads_the_quantized_model(saved):
    args = [saved["threads"]] + [a for kind in KINDS for a in saved[kind][:2]]
    proc = _run(LOAD, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("imported fair_calib_hf: True") == len(KINDS)
    for kind in KINDS:
        assert torch.equal(torch.load(saved[kind][1] + ".out"), saved[kind][2])


def test_without_the_package_loading_fails_with_pip_install(saved):
    proc = _run(HIDE + LOAD, [saved["threads"]] + list(saved["llada"][:2]))
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "pip install fair_calib_hf" in proc.stderr, proc.stderr[-3000:]
    assert "imported fair_calib_hf" not in proc.stdout


def test_a_reloaded_model_saves_the_loader_again(saved, tmp_path):
    again = AutoModel.from_pretrained(saved["dream"][0], trust_remote_code=True)
    again.save_pretrained(tmp_path)
    assert json.load(open(tmp_path / "config.json"))["auto_map"]["AutoModel"] == "fair_calib_loader.DreamModel"
    assert (tmp_path / LOADER_FILE).read_text() == open(os.path.join(saved["dream"][0], LOADER_FILE)).read()


def test_a_dequantized_model_saves_as_a_plain_float_checkpoint(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    deq = AutoModel.from_pretrained(saved["dream"][0], trust_remote_code=True).dequantize()
    deq.save_pretrained(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    assert "quantization_config" not in config and not (tmp_path / LOADER_FILE).exists()
    assert not any(v.startswith("fair_calib_loader.") for v in config["auto_map"].values())
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=True)
    assert torch.equal(again.lm_head.weight, deq.lm_head.weight)



def _import_chain(folder, names: list[str], importer: str | None = None) -> None:
    """Write modules ``names`` into a checkpoint folder, ``names[0]`` importing ``names[1]`` and so on (remote code
    spread over several files), each defining ``DEPTH`` (its distance from the chain's end); and make module
    ``importer`` import ``names[0]``."""
    for i, name in enumerate(names):
        body = f"from .{names[i + 1]} import DEPTH as _NEXT\n" if i + 1 < len(names) else "_NEXT = 0\n"
        (folder / f"{name}.py").write_text(body + "DEPTH = _NEXT + 1\n")
    if importer is None:
        return
    path = folder / f"{importer}.py"
    path.write_text(path.read_text() + f"\nfrom .{names[0]} import DEPTH as CHAIN_DEPTH  # noqa: E402\n")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_remote_code_of_any_import_depth_reloads_through_the_loader(tiny_dirs, tmp_path, kind, dtype):
    """The loader is the ``auto_map`` module, so transformers copies into its modules cache the files the
    loader imports: 4.57 copies only the *direct* relative imports of a local folder's ``auto_map`` module
    (5.x: all of them). A modeling module importing a sibling (upstream Dream: ``generation_utils.py``) must
    still reload from the saved quantized folder, in this process and in a fresh one; and so must a longer
    chain (modeling → chain_1 → chain_2 → chain_3) once the saved folder's loader is rewritten for it."""
    import shutil

    from transformers.dynamic_module_utils import get_relative_import_files, get_relative_imports

    from fair_calib_hf.saving import write_loader

    tag = f"{kind}-{str(dtype)[6:]}"
    source = tmp_path / f"src-{tag}"
    shutil.copytree(tiny_dirs[kind], source)
    model_module = f"modeling_{kind}"
    _import_chain(source, ["chain_1"], importer=model_module)  # 4.57 loads a local folder's direct imports only
    q = AutoModel.from_pretrained(str(source), trust_remote_code=True, dtype=dtype,
                                  quantization_config=FairCalibConfig(method="rtn"))
    assert sys.modules[type(q).__module__].CHAIN_DEPTH == 1
    saved = tmp_path / f"q-{tag}"
    q.save_pretrained(saved)
    ids = torch.randint(5, 90, (1, 10), generator=torch.Generator().manual_seed(2))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        expected = q(input_ids=ids).logits
        again = AutoModel.from_pretrained(str(saved), trust_remote_code=True, dtype="auto")  # 4.57: fp32 default
        assert again.dtype == dtype and torch.equal(again(input_ids=ids).logits, expected)

    deep = tmp_path / f"deep-{tag}"
    shutil.copytree(saved, deep)
    _import_chain(deep, ["chain_1", "chain_2", "chain_3"])  # the saved modeling file imports chain_1 already
    assert write_loader(deep, model_module)
    closure = {os.path.basename(f)[:-3] for f in get_relative_import_files(str(deep / f"{model_module}.py"))}
    assert {"chain_1", "chain_2", "chain_3"} <= closure
    assert closure | {model_module} <= set(get_relative_imports(str(deep / LOADER_FILE)))  # what 4.57 copies
    for folder in (saved, deep):
        proc = _run(LOAD.replace("trust_remote_code=True", "trust_remote_code=True, dtype='auto'"),
                    [str(torch.get_num_threads()), str(folder), str(tmp_path / "ids.pt")])
        assert proc.returncode == 0, (folder.name, proc.stderr[-3000:])
        assert torch.equal(torch.load(tmp_path / "ids.pt.out"), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_saving_the_same_model_twice_gives_the_same_bytes(tiny_dirs, tmp_path, kind):
    """safetensors writes the header metadata in a random order on every save; the save sorts it, so every file
    of two saves of one model (single file and sharded) is byte-identical, and the reload still works."""
    import filecmp

    q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="rtn"))
    for shard in (None, "100KB"):
        folders = [tmp_path / f"{shard}-{i}" for i in range(2)]
        for folder in folders:
            q.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
        names = sorted(os.listdir(folders[0]))
        assert names == sorted(os.listdir(folders[1]))
        assert sum(n.endswith(".safetensors") for n in names) == 1 if shard is None else "model.safetensors.index.json" in names
        _, mismatch, errors = filecmp.cmpfiles(folders[0], folders[1], names, shallow=False)
        assert not mismatch and not errors, mismatch
    again = AutoModel.from_pretrained(str(folders[0]), trust_remote_code=True)
    ids = torch.randint(5, 90, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, q(input_ids=ids).logits)


def test_canonical_header_keeps_every_key_value_and_tensor(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from fair_calib_hf.checkpoint import canonicalize_header_metadata

    tensors = {"b": torch.randn(3), "a": torch.arange(6, dtype=torch.int8).view(2, 3)}
    meta = {"z": "last", "quote": 'say "hi"\n\tnew line \\ slash /', "unicode": "λ0(t) — ü", "a": "{}", "m": ""}
    path = str(tmp_path / "x.safetensors")
    save_file(tensors, path, metadata=meta)
    size = os.path.getsize(path)
    changed = canonicalize_header_metadata(path)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == meta
    assert os.path.getsize(path) == size
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    assert list(header["__metadata__"]) == sorted(meta)
    assert not canonicalize_header_metadata(path)  # already canonical
    assert changed or list(meta) == sorted(meta)
