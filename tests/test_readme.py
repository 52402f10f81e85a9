"""Every Python snippet in README.md runs as written, in order, in one namespace, in a fresh folder.

Two things cannot happen here and are substituted explicitly (nothing is skipped):

* hub downloads: ``from_pretrained("<hub id>"`` is rewritten to the local checkpoint ``HUB_SUBSTITUTES`` maps
  that id to (the zoo model stands in for LLaDA-8B-Instruct); a snippet naming a hub id missing from the map
  fails the test;
* uploads: ``push_to_hub`` goes through the real transformers code up to ``HfApi.create_commit``, which is
  intercepted and writes the committed files into ``hub/<repo id>``; loading that repo id then reads that
  folder, so the snippet's round trip is checked for real.
"""
import os
import re
import shutil

import pytest

import fair_calib_hf

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
UPLOADED = "you/llada-w4a4"
HUB_SUBSTITUTES = {
    "GSAI-ML/LLaDA-8B-Instruct": fair_calib_hf.zoo.resolve("zoo:llada-arith"),
    UPLOADED: os.path.join("hub", UPLOADED),
}
HUB_ID = re.compile(r"""["']([A-Za-z0-9][\w.-]*/[\w.-]+)["']""")


def python_snippets() -> list[str]:
    with open(README) as handle:
        return re.findall(r"```python\n(.*?)```", handle.read(), re.S)


def _intercept_uploads(monkeypatch):
    import huggingface_hub
    from huggingface_hub import RepoUrl

    def create_commit(self, repo_id, operations=(), **kwargs):
        for op in operations:
            target = os.path.join("hub", repo_id, op.path_in_repo)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = op.path_or_fileobj
            if isinstance(source, (str, os.PathLike)):
                shutil.copyfile(source, target)
            else:
                with open(target, "wb") as handle:
                    handle.write(source if isinstance(source, bytes) else source.read())
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0",
                                          commit_message="", commit_description="", oid="0" * 40)

    def create_repo(self=None, repo_id=None, *args, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "preupload_lfs_files", lambda self, *a, **k: None)
    import transformers.utils.hub as tf_hub

    # transformers 4.57 calls huggingface_hub's module-level functions, bound to a default HfApi at import
    if hasattr(tf_hub, "create_repo"):
        monkeypatch.setattr(tf_hub, "create_repo", lambda repo_id, *a, **k: create_repo(None, repo_id))
    if hasattr(tf_hub, "create_commit"):
        monkeypatch.setattr(tf_hub, "create_commit", lambda repo_id, operations=(), **k: create_commit(
            None, repo_id, operations))


def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch):
    snippets = python_snippets()
    assert len(snippets) >= 4
    named = {m for code in snippets for m in HUB_ID.findall(code) if not m.startswith(("fair_calib_hf/", "./"))}
    missing = named - set(HUB_SUBSTITUTES)
    assert not missing, f"README names hub ids without a local substitute: {missing}"
    monkeypatch.chdir(tmp_path)
    _intercept_uploads(monkeypatch)
    namespace = {"__name__": "__readme__"}
    for index, code in enumerate(snippets):
        for hub_id, local in HUB_SUBSTITUTES.items():
            code = code.replace(f'from_pretrained("{hub_id}"', f"from_pretrained({local!r}")  # loads only
        exec(compile(code, f"README.md python snippet {index + 1}", "exec"), namespace)  # noqa: S102
    assert os.path.isfile(os.path.join("hub", UPLOADED, "model.safetensors"))
    assert namespace["model"].config.quantization_config.method == "rtn"
    assert 0.0 <= namespace["report"].flip_rate <= 1.0


FIRST_SCREEN_LINES = 65  # what a newcomer reads before scrolling far: what it does, the command, time, output


def _readme() -> str:
    with open(README) as handle:
        return handle.read()


def test_first_screen_gives_the_one_command_its_time_and_what_its_output_means():
    """The README opens with what the project does, then ONE command that sets up an environment and runs the
    quickstart on a fresh clone, how long it took, and what the printed table means."""
    head = "\n".join(_readme().splitlines()[:FIRST_SCREEN_LINES])
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", head, re.S) for line in block.splitlines()]
    assert "bash examples/run_quickstart.sh" in commands, f"no one-command quickstart in the first screen: {commands}"
    root = os.path.dirname(README)
    assert os.path.isfile(os.path.join(root, "examples", "run_quickstart.sh"))
    prose = " ".join(head.split())
    for what in ("How long", "What it prints", "accuracy", "Flip rate vs FP", "W4A4"):
        assert what in prose, f"the first screen does not say {what!r}"


def test_every_list_of_zoo_models_names_them_all():
    """A prose paragraph that lists the zoo models (names all of them but at most one) names every shipped one, so
    a newly shipped model cannot be left out of the CLI's or the reference models' list. (Tables name the models
    that were measured, not a catalogue.)"""
    available = set(fair_calib_hf.zoo.available())
    named_anywhere = set()
    for paragraph in re.split(r"\n\s*\n", _readme()):
        named = set(re.findall(r"zoo:([a-z][\w-]*)", paragraph))
        named_anywhere |= named
        prose = "\n".join(line for line in paragraph.splitlines() if not line.lstrip().startswith("|"))
        named = set(re.findall(r"zoo:([a-z][\w-]*)", prose))
        if len(named) >= len(available) - 1 and len(available) > 2:
            assert named == available, f"a list of zoo models misses {sorted(available - named)}: {paragraph[:200]!r}"
    assert named_anywhere <= available, f"README names zoo models that do not exist: {named_anywhere - available}"
