"""Write a zoo model's card (``README.md``): data, recipe, training cost and full-precision test scores.

    python -m fair_calib_hf.zoo.card NAME [--count 512]

The scores are measured here, on the test split, with the benchmark's default decoding
(:func:`fair_calib_hf.zoo.evaluate.default_decode_config`), and stored in ``training.json`` too.
"""
from __future__ import annotations

import argparse
import json
import os

from transformers import AutoModel, AutoTokenizer

from . import RECIPES, resolve
from .evaluate import evaluate
from .tasks import get_task

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The source checkout (``benchmarks/training/NAME/state.pt`` is looked up there, not in the working directory)."""

_DATA = {
    "arith": ("Multi-step addition/subtraction (a GSM8K analogue): a two-digit number then three single-digit "
              "additions or subtractions (every intermediate result in [10, 99]), answered by a worked solution "
              "ending in `#<answer>`, e.g. `47+8-6+3=` → `47+8=55;55-6=49;49+3=52;#52`. Generated on the fly; "
              "scored by exact match of the final answer."),
    "arith-fewshot": ("The `arith` problems in the few-shot layout of GSM8K evaluation: three solved problems of the "
                      "train split (question and worked answer, one per line) and then the question, e.g. "
                      "`23+4-7+2=23+4=27;27-7=20;20+2=22;#22⏎…⏎47+8-6+3=` → `47+8=55;55-6=49;49+3=52;#52`. "
                      "Prompt {context_width} tokens, answer {gen_length}: the answer window is {window_pct:.1f} % "
                      "of a calibration sequence (the paper's regime: the trailing 256 of 1,024 tokens). The "
                      "question decides the split (the same hash as `arith`)."),
    "code": ("Completion of the last {answer_chars} characters of Python source lines (16–72 ASCII characters, "
             "comment lines excluded, deduplicated) of the interpreter's own standard library (top-level `*.py` "
             "modules), with up to {context} preceding characters as the prompt. Scored by exact match of the "
             "completed span and by Monte-Carlo masked log-likelihood of the answer."),
}


def write_card(name: str, count: int = 512) -> dict:
    path = resolve(f"zoo:{name}")
    with open(os.path.join(path, "training.json")) as handle:
        record = json.load(handle)
    recipe = record["recipe"]
    task = get_task(recipe["task"])
    model = AutoModel.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    likelihood = 64 if task.name == "code" else 0
    scores = evaluate(model, tokenizer, task, split="test", count=count, likelihood_samples=likelihood)
    scores.pop("samples")
    record["scores"] = scores
    with open(os.path.join(path, "training.json"), "w") as handle:
        json.dump(record, handle, indent=1)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    lines = [
        f"# {name}: a {'LLaDA' if recipe['kind'] == 'llada' else 'Dream'}-style masked-diffusion LM "
        f"trained by fair_calib_hf",
        "",
        "A small reference model for measuring quantization quality offline (no real dLLM weights can be "
        "downloaded where this project is built). Same module tree, config keys and remote code as the real "
        f"{'LLaDA-8B' if recipe['kind'] == 'llada' else 'Dream-7B'} checkpoints; character-level tokenizer.",
        "",
        "```python",
        "from transformers import AutoModel",
        "from fair_calib_hf.zoo import resolve",
        f"model = AutoModel.from_pretrained(resolve(\"zoo:{name}\"), trust_remote_code=True)",
        "```",
        "",
        "## Data",
        _DATA[task.name].format(answer_chars=getattr(task, "answer_chars", 0), context=task.prompt_width - 1,
                                context_width=task.prompt_width, gen_length=task.gen_length,
                                window_pct=100 * task.gen_length / (task.prompt_width + task.gen_length)),
        "Splits (train / calibration / test = 80 / 10 / 10 % of all texts) are decided by a hash of the text, so "
        "they never overlap; training used only the train split.",
        "",
        "## Training",
        f"- objective: masked diffusion (t ~ U(0.001, 1), "
        f"{'every token but the first' if recipe.get('mask_prompt') else 'answer tokens'} masked with "
        f"probability t, CE / t), "
        f"{'output i predicts token i' if recipe['kind'] == 'llada' else 'output i − 1 predicts token i'}",
        f"- architecture: {json.dumps(recipe['model'])}; {record['parameters']:,} parameters; "
        f"{size / 2**20:.1f} MiB of fp32 safetensors",
        *([f"- fine-tuned from `zoo:{recipe['init_from']}` (its weights replace the random initialisation)"]
          if recipe.get("init_from") else []),
        f"- {recipe['steps']} steps × batch {recipe['batch_size']}, AdamW lr {recipe['lr']} (warm-up "
        f"{recipe['warmup_steps']}, cosine to {recipe['min_lr_ratio']}×"
        + "".join(f"; warm restart at step {start} to lr {peak}, same warm-up and cosine"
                  for start, peak in recipe.get("restarts") or ())
        + f"), weight decay {recipe['weight_decay']}, seed {recipe['seed']}"
        + (f"; from step {recipe['suffix_mask_start']} on, {100 * recipe['suffix_mask_fraction']:.0f} % of each "
           "batch's rows masked as a random answer suffix instead of independently"
           if recipe.get("suffix_mask_fraction") else "")
        + (f"; training batches drawn from the task built with {json.dumps(recipe['task_options'])} (scores, "
           "calibration and test use its defaults)" if recipe.get("task_options") else ""),
        f"- {record['train_seconds'] / 60:.0f} min of training on a 2-core CPU (Python {record['python']}); "
        f"final training loss {record['history'][-1]['loss']:.4f}",
        f"- reproduce: `python -m fair_calib_hf.zoo.train {name} --work runs/{name}`"
        + (f" (the repository keeps the resumable training state in `benchmarks/training/{name}/`: "
           f"`--work benchmarks/training/{name}` continues from it)"
           if os.path.isfile(os.path.join(_REPO_ROOT, "benchmarks", "training", name, "state.pt")) else ""),
        "",
        "## Full-precision scores (test split)",
        f"- exact match: {100 * scores['accuracy']:.1f} % of {scores['n']} problems",
    ]
    if "log_likelihood_per_token" in scores:
        lines.append(f"- Monte-Carlo masked log-likelihood: {scores['log_likelihood_per_token']:.3f} nats/token "
                     f"(perplexity {scores['perplexity']:.2f}) over the first {likelihood} problems")
    lines.append(f"- decoding: {json.dumps(scores['decoding'])}")
    with open(os.path.join(path, "README.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.zoo.card", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--count", type=int, default=512)
    args = parser.parse_args(argv)
    print(json.dumps(write_card(args.name, args.count), indent=1))


if __name__ == "__main__":
    main()
