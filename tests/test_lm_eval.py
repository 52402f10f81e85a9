"""The lm-evaluation-harness model fair_calib_dllm, run through lm_eval's real evaluator with a local task
definition (YAML) over a local JSON file, on tiny float and quantized models."""
import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm_eval is part of the [test] extra")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from fair_calib_hf.decoding import mc_log_likelihood  # noqa: E402
from fair_calib_hf.lm_eval_model import MODEL_NAME, FairCalibDLLM  # noqa: E402

DOCS = [{"question": "2+3=", "answer": "5", "choices": ["5", "7"], "label": 0},
        {"question": "4+4=", "answer": "8", "choices": ["9", "8"], "label": 1},
        {"question": "1+6=", "answer": "7", "choices": ["7", "2"], "label": 0}]

GEN_YAML = """task: tiny_arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

MC_YAML = """task: tiny_arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    data = root / "docs.json"
    data.write_text(json.dumps(DOCS))
    (root / "gen.yaml").write_text(GEN_YAML.format(data=data))
    (root / "mc.yaml").write_text(MC_YAML.format(data=data))
    return str(root)


@pytest.fixture(scope="module")
def quantized_dir(tiny_dirs, tmp_path_factory):
    from fair_calib_hf.cli import main

    out = str(tmp_path_factory.mktemp("q") / "llada-w4a4")
    assert main(["quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn", "--no-progress", "--no-report"]) == 0
    return out


@pytest.fixture(scope="module")
def quantized_w8a8_dir(tiny_dirs, tmp_path_factory):
    """A W8A8 checkpoint written by the CLI's ``--precision`` (issue 29)."""
    from fair_calib_hf.cli import main

    out = str(tmp_path_factory.mktemp("q") / "dream-w8a8")
    assert main(["quantize", tiny_dirs["dream"], "--out", out, "--method", "rtn", "--precision", "w8a8",
                 "--no-progress", "--no-report"]) == 0
    return out


@pytest.mark.parametrize("which", ["float", "quantized", "quantized-w8a8"])
def test_simple_evaluate_runs_generation_and_likelihood_tasks(tiny_dirs, task_dir, which, request):
    path = tiny_dirs["llada"] if which == "float" else request.getfixturevalue(
        "quantized_dir" if which == "quantized" else "quantized_w8a8_dir")
    results = lm_eval.simple_evaluate(
        model=MODEL_NAME, model_args=f"pretrained={path},gen_length=8,mc_num=4",
        tasks=["tiny_arith_gen", "tiny_arith_mc"], task_manager=TaskManager(include_path=task_dir),
        batch_size=2, log_samples=True)
    r = results["results"]
    assert 0.0 <= r["tiny_arith_gen"]["exact_match,none"] <= 1.0
    assert 0.0 <= r["tiny_arith_mc"]["acc,none"] <= 1.0
    samples = results["samples"]["tiny_arith_mc"]
    assert len(samples) == 3 and all(len(s["resps"]) == 2 for s in samples)  # one loglikelihood per choice
    assert len(results["samples"]["tiny_arith_gen"]) == 3


def test_loglikelihood_is_the_monte_carlo_estimate_and_generation_respects_until(tiny_dirs):
    lm = FairCalibDLLM(pretrained=tiny_dirs["dream"], gen_length=8, mc_num=6, seed=5)
    req = Instance(request_type="loglikelihood", doc={}, arguments=("2+3=", "5"), idx=0)
    (ll, greedy), = lm.loglikelihood([req])
    tok = lm.tokenizer
    prompt = torch.tensor([tok.bos_token_id] + tok("2+3=", add_special_tokens=False)["input_ids"])
    answer = torch.tensor(tok("5", add_special_tokens=False)["input_ids"])
    assert ll == mc_log_likelihood(lm.model, prompt, answer, mc_num=6, batch_size=6, seed=5) and ll < 0
    assert isinstance(greedy, bool)
    gen = Instance(request_type="generate_until", doc={}, arguments=("12+", {"until": ["+"], "max_gen_toks": 8}), idx=0)
    text, = lm.generate_until([gen])
    assert "+" not in text
    with pytest.raises(ValueError, match="pretrained"):
        FairCalibDLLM()
    with pytest.raises(ValueError, match="unknown float dtype 'int8'"):  # not torch's AttributeError
        FairCalibDLLM(pretrained=tiny_dirs["dream"], dtype="int8")


ZOO_YAML = """task: zoo_arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{reference}}}}"
generation_kwargs:
  until: []
filter_list:
  - name: final_answer
    filter:
      - function: regex
        regex_pattern: "#\\\\s*([^#]*?)\\\\s*$"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_zoo_model_through_simple_evaluate_scores_what_fair_calib_eval_scores(tmp_path, recwarn, dtype):
    """On a CPU-only torch the harness's default device falls back to CPU (warning), and a zoo model gets its
    own prompt layout: lm_eval's number and every decoded answer equal fair_calib_hf.zoo.evaluate's (what
    `fair-calib eval` prints) on the same test problems."""
    from transformers import AutoModel, AutoTokenizer

    from fair_calib_hf.zoo import resolve, task_of
    from fair_calib_hf.zoo.evaluate import default_decode_config, evaluate, generate_answers

    path = resolve("zoo:llada-arith")
    task = task_of(path)
    examples = task.examples("test", 8, seed=0)
    data = tmp_path / "zoo.json"
    data.write_text(json.dumps([{"prompt": e.prompt, "reference": e.reference} for e in examples]))
    (tmp_path / "zoo.yaml").write_text(ZOO_YAML.format(data=data))
    device = "cuda:0" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    results = lm_eval.simple_evaluate(model=MODEL_NAME,
                                      model_args=f"pretrained=zoo:llada-arith,device={device},dtype={dtype}",
                                      tasks=["zoo_arith_gen"], task_manager=TaskManager(include_path=str(tmp_path)),
                                      batch_size=4, log_samples=True)
    assert any("not available" in str(w.message) for w in recwarn)
    model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    expected = evaluate(model, tokenizer, task, "test", 8, seed=0)
    texts, _ = generate_answers(model, tokenizer, task, examples, default_decode_config(task, "llada"))
    got = {s["doc"]["prompt"]: s["resps"][0][0] for s in results["samples"]["zoo_arith_gen"]}
    assert [got[e.prompt] for e in examples] == texts
    assert results["results"]["zoo_arith_gen"]["exact_match,final_answer"] == pytest.approx(expected["accuracy"])
    assert expected["accuracy"] > 0.5  # the layout matters: the generic one scored 0


def test_zoo_layout_in_likelihood_and_refusal_of_prompts_that_do_not_fit(tmp_path):
    from fair_calib_hf.zoo.tasks import Example

    lm = FairCalibDLLM(pretrained="zoo:llada-arith", mc_num=4, seed=3)
    task = lm.zoo_task
    assert task.name == "arith" and lm.gen_length == task.gen_length
    req = Instance(request_type="loglikelihood", doc={}, arguments=("47+8-6+3=", "47+8=55"), idx=0)
    (ll, _), = lm.loglikelihood([req])
    prompt = task.encode([Example("47+8-6+3=", "", "")], lm.tokenizer)[0][0]  # BOS + text, EOS left padding
    assert prompt.numel() == task.prompt_width and int(prompt[0]) == lm.tokenizer.eos_token_id
    answer = torch.tensor(lm.tokenizer("47+8=55", add_special_tokens=False)["input_ids"])
    assert ll == mc_log_likelihood(lm.model, prompt, answer, mc_num=4, batch_size=4, seed=3)
    req = Instance(request_type="generate_until", doc={}, arguments=("12+3+4+5+6+7+8+9=", {}), idx=0)
    with pytest.raises(ValueError, match="at most 11 tokens after BOS.*left-padded with EOS to 12"):
        lm.generate_until([req])


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eot }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_apply_chat_template_for_a_model_with_a_chat_template(tiny_dirs, task_dir, tmp_path, kind, dtype):
    """lm-eval's ``apply_chat_template=True`` (instruct models): the harness renders each request through the
    tokenizer's chat template (``apply_chat_template``, ``chat_template``, ``tokenizer_name``), the prompt is
    encoded with its one BOS; a model whose tokenizer has no chat template is refused before any work, naming
    the fix."""
    import shutil

    from transformers import AutoTokenizer

    from fair_calib_hf.reference_models import SPECIAL_TOKENS

    path = str(tmp_path / f"chat-{kind}")
    shutil.copytree(tiny_dirs[kind], path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    eot = SPECIAL_TOKENS[kind]["eot_token"]
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{{ eot }}", eot)
    tokenizer.save_pretrained(path)
    results = lm_eval.simple_evaluate(
        model=MODEL_NAME, model_args=f"pretrained={path},gen_length=8,mc_num=2,dtype={dtype}",
        tasks=["tiny_arith_gen", "tiny_arith_mc"], task_manager=TaskManager(include_path=task_dir),
        apply_chat_template=True, log_samples=True)
    bos = SPECIAL_TOKENS[kind]["bos_token"]
    for task in ("tiny_arith_gen", "tiny_arith_mc"):
        prompts = [s["arguments"][0][0] for s in results["samples"][task]]
        assert len(prompts) == 3 and all(p.startswith(f"{bos}user: ") and p.endswith(f"{eot}\nassistant: ")
                                          for p in prompts), prompts
    assert 0.0 <= results["results"]["tiny_arith_gen"]["exact_match,none"] <= 1.0
    lm = FairCalibDLLM(pretrained=path, dtype=dtype)
    assert lm.model.dtype == getattr(torch, dtype) and lm.chat_template(True) == tokenizer.chat_template
    assert lm.tokenizer_name == path.replace("/", "__")
    rendered = lm.apply_chat_template([{"role": "user", "content": "2+3="}])
    assert lm._encode(rendered, bos=True).count(tokenizer.bos_token_id) == 1
    with pytest.raises(ValueError, match="no chat template.*apply_chat_template"):
        lm_eval.simple_evaluate(model=MODEL_NAME, model_args=f"pretrained={tiny_dirs[kind]},gen_length=8",
                                tasks=["tiny_arith_gen"], task_manager=TaskManager(include_path=task_dir),
                                apply_chat_template=True)
