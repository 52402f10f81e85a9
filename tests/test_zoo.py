"""Zoo tasks (splits, answers, layout), the masked-diffusion trainer (determinism, resumption) and the shipped
reference models."""
import dataclasses
import json
import os
import random
import re

import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.calibration.data import load_calibration_samples
from fair_calib_hf.reference_models import build_tokenizer, special_token_ids
from fair_calib_hf.zoo import RECIPES, available, resolve, task_of
from fair_calib_hf.zoo.evaluate import answer_log_likelihood, default_decode_config, evaluate
from fair_calib_hf.zoo.tasks import SPLITS, Example, get_task, split_of, stdlib_lines
from fair_calib_hf.zoo.train import TrainConfig, diffusion_loss, load_trained_state, lr_at, make_batch, train


@pytest.mark.parametrize("name", ["arith", "arith-fewshot", "code"])
def test_splits_are_disjoint_and_consistent(name):
    task = get_task(name)
    drawn = {split: task.examples(split, 300, seed=1) for split in SPLITS}
    keys = {split: {task.split_key(e) for e in exs} for split, exs in drawn.items()}
    assert all(len(k) == 300 for k in keys.values())  # distinct within a split
    assert not keys["train"] & keys["calibration"]
    assert not keys["train"] & keys["test"]
    assert not keys["calibration"] & keys["test"]
    for split, exs in drawn.items():
        assert all(split_of(*task.split_key(e)) == split for e in exs)
    assert task.examples("test", 20, seed=3) == task.examples("test", 20, seed=3)
    assert task.examples("test", 20, seed=3) != task.examples("test", 20, seed=4)


def test_arithmetic_answers_are_correct():
    task = get_task("arith")
    for ex in task.examples("train", 500, seed=0):
        assert re.fullmatch(r"\d\d([+-][1-9]){3}=", ex.prompt)
        assert re.fullmatch(r"(\d\d[+-][1-9]=\d\d;){3}#\d\d", ex.answer)  # the fixed shape
        assert str(eval(ex.prompt[:-1])) == ex.reference  # noqa: S307 - digits and +/- only
        steps = ex.answer.split(";")
        assert steps[-1] == "#" + ex.reference
        value = None
        for step in steps[:-1]:
            lhs, rhs = step.split("=")
            assert 10 <= int(rhs) == eval(lhs) <= 99  # noqa: S307
            if value is not None:
                assert lhs.startswith(str(value))  # each step starts from the previous result
            value = int(rhs)
        assert value == int(ex.reference)
    ops = [e.prompt[2] for e in task.examples("train", 200)]
    assert 0.3 < ops.count("+") / len(ops) < 0.7  # both operations occur


def test_arithmetic_scoring():
    task = get_task("arith")
    ex = Example("12+30=", "12+30=42;#42", "42")
    assert task.score("12+30=42;#42", ex)
    assert task.score("12+30=41;#42", ex)  # only the final answer counts, as in GSM8K
    assert not task.score("12+30=42;#43", ex)
    assert not task.score("42", ex)  # no final-answer marker
    assert task.accuracy(["12+30=42;#42", "#43"], [ex, ex]) == 0.5


def test_fewshot_arithmetic_layout_and_splits():
    """3 solved train-split problems then an ``arith`` question of the same split; the answer window is at most
    30 % of a calibration sequence (the paper's regime: 256 of 1,024 tokens)."""
    task, arith = get_task("arith-fewshot"), get_task("arith")
    assert task.gen_length / (task.prompt_width + task.gen_length) <= 0.3
    test_questions = {(e.prompt, e.answer) for e in arith.examples("test", 2000, seed=0)}
    for split in SPLITS:
        for ex in task.examples(split, 200, seed=2):
            *shots, question = ex.prompt.split("\n")
            assert len(shots) == task.shots
            assert split_of("arith", question, ex.answer) == split
            assert str(eval(question[:-1])) == ex.reference  # noqa: S307 - digits and +/- only
            for shot in shots:
                q, a = shot[:shot.index("=") + 1], shot[shot.index("=") + 1:]
                assert split_of("arith", q, a) == "train" and a.endswith("#" + str(eval(q[:-1])))  # noqa: S307
                assert (q, a) not in test_questions
    for kind in ("llada", "dream"):  # every example fits the fixed width
        prompts, _ = task.encode(task.examples("test", 300, seed=0), build_tokenizer(kind))
        assert prompts.shape == (300, task.prompt_width)


def test_fewshot_min_shots_mixes_shot_counts_only_where_asked(tmp_path, monkeypatch):
    """``min_shots`` (a training option) draws 0 … 3 shots per example, each prompt still fits and keeps its
    question's split; the default task, which every score uses, always has 3; the trainer builds its batches
    with the recipe's ``task_options``; a bad option raises."""
    mixed = get_task("arith-fewshot", min_shots=0)
    examples = mixed.examples("train", 400, seed=3)
    counts = {ex.prompt.count("\n") for ex in examples}
    assert counts == {0, 1, 2, 3}
    assert all(split_of("arith", ex.prompt.rsplit("\n", 1)[-1], ex.answer) == "train" for ex in examples)
    prompts, _ = mixed.encode(examples, build_tokenizer("llada"))
    assert prompts.shape == (400, mixed.prompt_width)
    assert {ex.prompt.count("\n") for ex in get_task("arith-fewshot").examples("train", 100, seed=3)} == {3}
    for bad in ({"min_shots": 4}, {"min_shots": -1}):
        with pytest.raises(ValueError, match="min_shots"):
            get_task("arith-fewshot", **bad)
    with pytest.raises(ValueError, match="does not take"):
        get_task("arith", min_shots=0)
    fixed = get_task("arith-fewshot", shots=1)  # a fixed smaller count (the probe's --shots), same width
    assert {ex.prompt.count("\n") for ex in fixed.examples("train", 100, seed=3)} == {1}
    assert fixed.encode(fixed.examples("train", 4, seed=3), build_tokenizer("llada"))[0].shape[1] == 124
    for bad in ({"shots": 4}, {"shots": -1}, {"shots": 1, "min_shots": 2}):
        with pytest.raises(ValueError, match="shots"):
            get_task("arith-fewshot", **bad)
    import fair_calib_hf.zoo.train as trainer

    built = []
    monkeypatch.setattr(trainer, "get_task", lambda name, **options: built.append(options) or get_task(name, **options))
    cfg = dataclasses.replace(_tiny_recipe("llada", 2), task="arith-fewshot", task_options={"min_shots": 0})
    _, history = train(cfg, str(tmp_path / "run"), log=lambda *a, **k: None)
    assert history[-1]["step"] == 2 and built == [{"min_shots": 0}]


def test_fine_tuning_recipe_starts_from_the_zoo_model():
    from fair_calib_hf.zoo.train import build_model

    for name, recipe in RECIPES.items():
        if recipe.init_from is None or recipe.init_from not in available():
            continue
        model = build_model(recipe).eval()
        source = AutoModel.from_pretrained(resolve(f"zoo:{recipe.init_from}"), trust_remote_code=True).eval()
        x = torch.randint(0, 60, (2, 12))
        assert torch.equal(model(input_ids=x).logits, source(input_ids=x).logits), name
        layers = "n_layers" if recipe.kind == "llada" else "num_hidden_layers"
        wrong = TrainConfig(**{**vars(recipe), "model": {**recipe.model, layers: 2}})
        with pytest.raises(ValueError, match="architecture"):
            build_model(wrong)


def test_code_examples_come_from_the_standard_library():
    task = get_task("code")
    lines = set(stdlib_lines())
    for ex in task.examples("test", 50, seed=0):
        assert len(ex.answer) == task.answer_chars and ex.answer == ex.reference
        assert any(line.endswith(ex.prompt + ex.answer) for line in lines if ex.answer in line)
    assert task.score("abc", Example("x", "abc", "abc")) and not task.score("abd", Example("x", "abc", "abc"))


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_encode_layout(kind):
    task = get_task("arith")
    tok = build_tokenizer(kind)
    ids = special_token_ids(kind)
    ex = Example("12+30=", "12+30=42;#42", "42")
    prompts, answers = task.encode([ex], tok)
    assert prompts.shape == (1, task.prompt_width) and answers.shape == (1, task.gen_length)
    p, a = prompts[0].tolist(), answers[0].tolist()
    start = task.prompt_width - len(ex.prompt) - 1
    assert p[:start] == [ids["eos_token_id"]] * start and p[start] == ids["bos_token_id"]
    assert tok.decode(p[start + 1:]) == ex.prompt
    assert tok.decode(a[: len(ex.answer)]) == ex.answer and a[len(ex.answer)] == ids["eot_token_id"]
    assert set(a[len(ex.answer) + 1:]) == {ids["eos_token_id"]}
    with pytest.raises(ValueError, match="does not fit"):
        task.encode([Example("1" * 40, "2", "2")], tok)
    with pytest.raises(ValueError, match="does not fit"):
        task.encode([Example("1", "2" * task.gen_length, "2")], tok)  # no room left for the end of turn


def test_calibration_sequences_keep_their_layout(tiny_dirs):
    """Sequences of exactly seq_len tokens are used as they are (no EOS inserted, no re-chunking)."""
    task = get_task("arith")
    model = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    seqs = task.calibration_sequences(build_tokenizer("llada"), 6, seed=0)
    seq_len = task.prompt_width + task.gen_length
    cfg = FairCalibConfig(method="fair_calib", calibration_dataset=seqs, num_samples=4, seq_len=seq_len)
    got = load_calibration_samples(cfg, model, fixed_length=True)
    assert [s.tolist() for s in got] == seqs[:4]


def _tiny_recipe(kind, steps):
    model = (dict(d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=64) if kind == "llada" else
             dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                  num_hidden_layers=1))
    return TrainConfig(kind=kind, task="arith", model=model, steps=steps, batch_size=8, warmup_steps=2,
                       log_every=2, checkpoint_every=2, seed=5)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_training_is_deterministic_and_resumable(kind, tmp_path):
    cfg = _tiny_recipe(kind, 6)
    straight, _ = train(cfg, str(tmp_path / "a"), log=lambda *a, **k: None)
    train(cfg, str(tmp_path / "b"), max_steps=4, log=lambda *a, **k: None)
    resumed, history = train(cfg, str(tmp_path / "b"), log=lambda *a, **k: None)
    assert history[-1]["step"] == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="different TrainConfig"):
        train(_tiny_recipe(kind, 8), str(tmp_path / "b"), log=lambda *a, **k: None)


def test_warm_restart_continues_a_finished_run(tmp_path):
    quiet = lambda *a, **k: None  # noqa: E731
    cfg = _tiny_recipe("llada", 6)
    longer = dataclasses.replace(cfg, steps=9, restarts=((6, cfg.lr / 2),))
    assert [lr_at(cfg, s) for s in range(6)] == [lr_at(longer, s) for s in range(6)]
    assert [lr_at(longer, s) for s in (6, 7)] == [cfg.lr / 2 / 2, cfg.lr / 2]  # a new warm-up (2 steps) to the peak
    train(cfg, str(tmp_path / "a"), log=quiet)
    continued, history = train(longer, str(tmp_path / "a"), log=quiet)
    straight, _ = train(longer, str(tmp_path / "b"), log=quiet)
    assert history[-1]["step"] == 9
    for (name, a), b in zip(straight.state_dict().items(), continued.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="different TrainConfig"):  # a restart inside the steps already run
        train(dataclasses.replace(cfg, steps=12, restarts=((5, cfg.lr / 2),)), str(tmp_path / "a"), log=quiet)
    for bad in (((9, 1e-3),), ((0, 1e-3),), ((6, 0.0),), ((7, 1e-3), (6, 1e-3))):
        with pytest.raises(ValueError, match="restarts"):
            dataclasses.replace(cfg, steps=9, restarts=bad)


def test_export_writes_an_intermediate_state_as_a_checkpoint(tmp_path, monkeypatch, capsys):
    """``zoo.train --export --out DIR`` writes the state in ``--work`` as it stands (the weights of step 4 of a
    6-step run), trains nothing, and refuses to run without ``--out`` or on a folder with no state."""
    from fair_calib_hf.zoo import train as train_module
    quiet = lambda *a, **k: None  # noqa: E731
    cfg = _tiny_recipe("llada", 6)
    monkeypatch.setitem(RECIPES, "tiny-export-test", cfg)
    work = str(tmp_path / "work")
    trained, _ = train(cfg, work, max_steps=4, log=quiet)
    loaded, history, step = load_trained_state(cfg, work)
    assert history[-1]["step"] == step == 4
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    train_module.main(["tiny-export-test", "--work", work, "--export", "--out", str(tmp_path / "ckpt")])
    assert "at step 4" in capsys.readouterr().out
    exported = AutoModel.from_pretrained(str(tmp_path / "ckpt"), trust_remote_code=True)
    for (name, a), b in zip(trained.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.load(os.path.join(work, "state.pt"), weights_only=False)["step"] == 4  # nothing trained
    with pytest.raises(SystemExit):
        train_module.main(["tiny-export-test", "--work", work, "--export"])
    assert "--export needs --out" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="state.pt does not exist"):
        load_trained_state(cfg, str(tmp_path / "empty"))


def test_export_reports_the_state_step_not_the_last_logged_one(tmp_path, monkeypatch, capsys):
    """A run stopped between a checkpoint and the next log line (checkpoint every step, log every 3): the state
    is at step 5, the loss history's last entry at step 3; ``--export`` names step 5, the weights it writes."""
    from fair_calib_hf.zoo import train as train_module

    def stop_at_end(line, **_):
        if "step 6/" in line:
            raise KeyboardInterrupt  # interrupted after step 6's update, before its checkpoint

    cfg = dataclasses.replace(_tiny_recipe("llada", 6), log_every=3, checkpoint_every=1)
    monkeypatch.setitem(RECIPES, "tiny-export-step-test", cfg)
    work = str(tmp_path / "work")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work, log=stop_at_end)
    _, history, step = load_trained_state(cfg, work)
    assert (history[-1]["step"], step) == (3, 5)
    train_module.main(["tiny-export-step-test", "--work", work, "--export", "--out", str(tmp_path / "ckpt")])
    assert "at step 5 " in capsys.readouterr().out


def test_suffix_masking_rows_and_continuation(tmp_path):
    quiet = lambda *a, **k: None  # noqa: E731
    cfg = _tiny_recipe("llada", 6)
    task, tokenizer = get_task(cfg.task), build_tokenizer(cfg.kind)
    mask_id = special_token_ids("llada")["mask_token_id"]
    plain = make_batch(task, tokenizer, cfg, 3, mask_id)
    assert all(torch.equal(a, b) for a, b in zip(plain, make_batch(
        task, tokenizer, dataclasses.replace(cfg, suffix_mask_fraction=1.0, suffix_mask_start=4), 3, mask_id)))
    inputs, targets, masked, t = make_batch(task, tokenizer, dataclasses.replace(cfg, suffix_mask_fraction=1.0), 3,
                                            mask_id)
    assert torch.equal(masked.int().cummax(1).values, masked.int()) and masked[:, -1].all()  # a suffix per row
    assert torch.allclose(t, masked.float().mean(1))
    assert torch.equal(inputs[:, -targets.shape[1]:], targets.masked_fill(masked, mask_id))
    half = make_batch(task, tokenizer, dataclasses.replace(cfg, suffix_mask_fraction=0.5), 3, mask_id)
    same = (half[2] == plain[2]).all(1) & (half[3] == plain[3])
    assert 0 < int(same.sum()) < len(same)  # the other rows are the plain recipe's
    train(cfg, str(tmp_path / "a"), max_steps=4, log=quiet)
    switched_on = dataclasses.replace(cfg, suffix_mask_fraction=0.5, suffix_mask_start=4)
    _, history = train(switched_on, str(tmp_path / "a"), log=quiet)  # from the saved step on: continues
    assert history[-1]["step"] == 6
    with pytest.raises(ValueError, match="different TrainConfig"):  # would change steps already run
        train(dataclasses.replace(switched_on, suffix_mask_start=2), str(tmp_path / "a"), log=quiet)
    with pytest.raises(ValueError, match="suffix_mask_fraction"):
        dataclasses.replace(cfg, suffix_mask_fraction=1.5)


def test_diffusion_loss_masks_only_answers_and_uses_the_shift():
    cfg = _tiny_recipe("dream", 4)
    task, tok = get_task("arith"), build_tokenizer("dream")
    inputs, targets, masked, t = make_batch(task, tok, cfg, step=3, mask_id=2)
    p = task.prompt_width
    assert (inputs[:, :p] != 2).all() and masked.any(1).all()
    assert torch.equal(inputs[:, p:] == 2, masked)
    assert ((t > 0) & (t <= 1)).all()

    class Oracle(torch.nn.Module):
        """Puts all probability on the right token at output i − shift: zero loss only with that shift."""

        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def forward(self, input_ids):
            logits = torch.full((*input_ids.shape, 104), -1e4)
            full = torch.cat([input_ids[:, :p], targets], 1)
            idx = torch.arange(input_ids.shape[1] - self.shift)
            logits[:, idx] = torch.nn.functional.one_hot(full[:, idx + self.shift], 104).float() * 2e4 - 1e4
            return type("Out", (), {"logits": logits})()

    assert float(diffusion_loss(Oracle(1), inputs, targets, masked, t, shift=1)) == pytest.approx(0.0, abs=1e-4)
    assert float(diffusion_loss(Oracle(0), inputs, targets, masked, t, shift=1)) > 1.0


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_pretraining_objective_noises_every_position_but_the_first(kind):
    """``mask_prompt``: the region is the whole sequence after position 0, the oracle with the family's shift
    still scores zero, and the unmasked tokens are the true ones."""
    from dataclasses import replace

    cfg = replace(_tiny_recipe(kind, 4), mask_prompt=True, batch_size=64)
    task, tok = get_task("arith"), build_tokenizer(kind)
    inputs, targets, masked, t = make_batch(task, tok, cfg, step=1, mask_id=2)
    width = task.prompt_width + task.gen_length
    assert inputs.shape == (64, width) and targets.shape == masked.shape == (64, width - 1)
    assert (inputs[:, 0] != 2).all() and torch.equal(inputs[:, 1:] == 2, masked)
    assert torch.equal(inputs[:, 1:][~masked], targets[~masked])
    assert masked[:, : task.prompt_width - 1].any()  # prompt positions are noised too
    shift = 1 if kind == "dream" else 0

    class Oracle(torch.nn.Module):
        def forward(self, input_ids):
            full = torch.cat([input_ids[:, :1], targets], 1)
            logits = torch.full((*input_ids.shape, 200), -1e4)
            idx = torch.arange(input_ids.shape[1] - shift)
            logits[:, idx] = torch.nn.functional.one_hot(full[:, idx + shift], 200).float() * 2e4 - 1e4
            return type("Out", (), {"logits": logits})()

    assert float(diffusion_loss(Oracle(), inputs, targets, masked, t, shift=shift)) == pytest.approx(0.0, abs=1e-4)


def test_answer_likelihood_scores_the_whole_trained_window(tiny_dirs, monkeypatch):
    """The answer window keeps its EOS padding (the layout the model was trained on), and the total is divided
    by the text + end-of-turn tokens only."""
    import fair_calib_hf.zoo.evaluate as ev

    task, tok = get_task("arith"), build_tokenizer("llada")
    examples = task.examples("calibration", 3, seed=1)
    seen = []
    monkeypatch.setattr(ev, "mc_log_likelihood", lambda model, p, a, **kw: seen.append(a.clone()) or -1.0)
    model = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    got = ev.answer_log_likelihood(model, tok, task, examples, mc_num=2)
    _, answers = task.encode(examples, tok)
    assert [a.numel() for a in seen] == [task.gen_length] * 3
    assert got == pytest.approx(-3.0 / int((answers != tok.eos_token_id).sum()))


def test_resolve_names():
    assert resolve("some/hub-id") == "some/hub-id"
    assert resolve("/a/local/path") == "/a/local/path"
    with pytest.raises(ValueError, match="unknown zoo model 'zoo:nope'"):
        resolve("zoo:nope")
    assert set(available()) <= set(RECIPES)


def test_evaluate_reports_accuracy_and_settings(tiny_dirs):
    model = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    task = get_task("arith")
    result = evaluate(model, build_tokenizer("llada"), task, split="calibration", count=4, likelihood_samples=2,
                      mc_num=4)
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert result["decoding"] == {"policy": "low_confidence", "gen_length": 32, "steps": 32, "block_length": 8,
                                  "temperature": 0.0}
    assert result["log_likelihood_per_token"] < 0 and result["perplexity"] > 1
    assert default_decode_config(task, "dream").policy == "maskgit_plus"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_model_loads_and_solves_its_task(name):
    if name not in available():
        pytest.skip(f"zoo model {name} is not in this installation")
    path = resolve(f"zoo:{name}")
    model = AutoModel.from_pretrained(path, trust_remote_code=True)
    task = task_of(f"zoo:{name}")
    assert task.name == RECIPES[name].task
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    assert size < 12 * 2**20
    with open(os.path.join(path, "training.json")) as handle:
        record = json.load(handle)
    card = record["scores"]
    assert TrainConfig(**record["recipe"]) == RECIPES[name], "the shipped model was not trained by its recipe"
    assert card["split"] == "test" and card["n"] >= 256
    tokenizer = build_tokenizer(RECIPES[name].kind)
    if "log_likelihood_per_token" in card:
        # A low card accuracy (llada-code: 6 %) leaves an accuracy check nothing to catch. The card's likelihood
        # was measured on the first 64 test problems with 32 Monte-Carlo draws, seed 0 (zoo.card); the same
        # problems and draws here leave only float rounding between the two (bf16 weights on the development
        # CPU: 5e-5 nats/token), while a broken model is off by far more (uniform guess: -log(vocab) ≈ -4.6).
        got = answer_log_likelihood(model, tokenizer, task, task.examples("test", 64, seed=0), mc_num=32, seed=0)
        assert got == pytest.approx(card["log_likelihood_per_token"], abs=0.01)
        return
    assert card["accuracy"] >= 0.5, "an accuracy check 0.3 below this card could not fail: add a likelihood"
    result = evaluate(model, tokenizer, task, split="test", count=16)
    assert result["n"] == 16 and result["decoding"] == card["decoding"]
    # 16 of the card's test problems: the score may differ from the card's by sampling noise only
    assert result["accuracy"] >= card["accuracy"] - 0.3, result["samples"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_remote_code_is_the_package_source(name):
    """Each zoo checkpoint carries its own copy of the remote code (as a Hub repo does); the copies must not
    drift from ``fair_calib_hf/reference_models`` (retrain or re-save the model after changing them)."""
    from fair_calib_hf.reference_models import remote_code_files

    if name not in available():
        pytest.skip(f"zoo model {name} is not in this installation")
    for source in remote_code_files(RECIPES[name].kind):
        shipped = os.path.join(resolve(f"zoo:{name}"), os.path.basename(source))
        with open(source, "rb") as a, open(shipped, "rb") as b:
            assert a.read() == b.read(), f"{shipped} differs from {source}"


def test_answer_position_probe_scores_shot_counts_and_rejects_bad_options(capsys):
    """``benchmarks/answer_position_accuracy.py`` (the probe benchmarks/TRAINING.md follows a training with): a shipped
    few-shot model, 0 shots, train split; every row has one value per answer position, the cross-entropy row is
    ≥ 0, and some token is right on every problem under ``single``. ``--shots`` on a task without shots, or
    beyond the prompt's width, is an argparse error."""
    import runpy
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "answer_position_accuracy.py")
    probe = runpy.run_path(script)["main"]
    probe(["zoo:dream-arith-fewshot", "--count", "4", "--split", "train", "--shots", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert "4 train-split problems (seed 7, 0 shots)" in lines[0]
    width = task_of(resolve("zoo:dream-arith-fewshot")).gen_length
    rows = {line[:12].strip(): [float(v) for v in line[12:].split()] for line in lines[3:]}
    assert list(rows) == ["single", "suffix", "suffix nats"]
    assert all(len(values) == width for values in rows.values())
    assert min(rows["suffix nats"]) >= 0 and max(rows["single"]) == 1.0
    for argv in (["zoo:dream-arith", "--shots", "1"], ["zoo:dream-arith-fewshot", "--shots", "4"]):
        with pytest.raises(SystemExit):
            probe(argv)
        assert "--shots" in capsys.readouterr().err
