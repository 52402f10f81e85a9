"""Where a zoo model's answers go wrong: per-position accuracy of one forward pass on calibration-split problems.

For each answer position ``j`` (``gen_length`` of them) and problems of the **calibration split** (never the test
split), two masked inputs are scored by the argmax of the model's output at ``j`` against the reference token:

* ``single``: only position ``j`` is masked (every other answer token visible);
* ``suffix``: positions ``j`` and everything after it are masked, the state a left-to-right decoder is in when it
  reaches ``j``.

A position that is right under ``single`` but wrong under ``suffix`` is copied from a later answer token rather
than computed (used in BENCHMARKS.md for ``zoo:llada-arith-fewshot``).

    python benchmarks/answer_position_accuracy.py zoo:llada-arith-fewshot [--count 64] [--seed 7]
"""
import argparse

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from fair_calib_hf import zoo
from fair_calib_hf.architectures import get_adapter


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo name or checkpoint folder")
    parser.add_argument("--count", type=int, default=64, help="calibration-split problems (default 64)")
    parser.add_argument("--seed", type=int, default=7, help="which problems (default 7)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    path = zoo.resolve(args.model)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    task = zoo.task_of(path)
    prompts, answers = task.encode(task.examples("calibration", args.count, args.seed), tokenizer)
    mask_id = get_adapter(model).mask_token_id(model.config)
    sequence = torch.cat([prompts, answers], 1)
    start, width = prompts.shape[1], answers.shape[1]
    rows = {"single": [], "suffix": []}
    for j in range(width):
        for name, stop in (("single", start + j + 1), ("suffix", start + width)):
            inputs = sequence.clone()
            inputs[:, start + j:stop] = mask_id
            prediction = model(input_ids=inputs).logits[:, start + j].argmax(-1)
            rows[name].append((prediction == sequence[:, start + j]).float().mean().item())
    reference = tokenizer.convert_ids_to_tokens(answers[0].tolist())
    print(f"{args.model}: accuracy per answer position, {args.count} calibration-split problems (seed {args.seed})")
    print("position  " + " ".join(f"{j:>5d}" for j in range(width)))
    print("token     " + " ".join(f"{t[:5]:>5s}" for t in reference))
    for name, values in rows.items():
        print(f"{name:<9s} " + " ".join(f"{v:5.2f}" for v in values))


if __name__ == "__main__":
    main()
