"""Where a zoo model's answers go wrong: per-position accuracy of one forward pass on calibration-split problems.

For each answer position ``j`` (``gen_length`` of them) and problems of the **calibration split** (or, with
``--split train``, the training split, to follow a model while it trains; never the test split), two masked
inputs are scored by the argmax of the model's output at ``j`` against the reference token:

* ``single``: only position ``j`` is masked (every other answer token visible);
* ``suffix``: positions ``j`` and everything after it are masked, the state a left-to-right decoder is in when it
  reaches ``j``.

A position that is right under ``single`` but wrong under ``suffix`` is copied from a later answer token rather
than computed (used in benchmarks/TRAINING.md for ``zoo:llada-arith-fewshot``). The ``suffix nats`` row is the mean
cross-entropy (natural log) of the reference token under ``suffix``: ln 10 = 2.30 on a digit means a uniform
guess among the ten digits. ``--shots K`` (few-shot tasks only) scores prompts with ``K`` solved problems
instead of the task's default, at the same prompt width (left-padded), the layouts ``task_options={"min_shots":
…}`` trains on.

    python benchmarks/answer_position_accuracy.py zoo:llada-arith-fewshot [--count 64] [--seed 7]
    python benchmarks/answer_position_accuracy.py CHECKPOINT_FOLDER --split train --shots 0
"""
import argparse

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from fair_calib_hf import zoo
from fair_calib_hf.architectures import get_adapter
from fair_calib_hf.zoo.tasks import get_task


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo name or checkpoint folder")
    parser.add_argument("--count", type=int, default=64, help="calibration-split problems (default 64)")
    parser.add_argument("--seed", type=int, default=7, help="which problems (default 7)")
    parser.add_argument("--split", choices=("calibration", "train"), default="calibration",
                        help="which split's problems (default calibration)")
    parser.add_argument("--shots", type=int, default=None,
                        help="few-shot tasks: solved problems in each prompt (default: the task's own count)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    path = zoo.resolve(args.model)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    task = zoo.task_of(path)
    if args.shots is not None:
        try:
            task = get_task(task.name, shots=args.shots)
        except ValueError as error:
            parser.error(f"--shots {args.shots}: {error}")
    prompts, answers = task.encode(task.examples(args.split, args.count, args.seed), tokenizer)
    mask_id = get_adapter(model).mask_token_id(model.config)
    sequence = torch.cat([prompts, answers], 1)
    start, width = prompts.shape[1], answers.shape[1]
    rows = {"single": [], "suffix": [], "suffix nats": []}
    for j in range(width):
        for name, stop in (("single", start + j + 1), ("suffix", start + width)):
            inputs = sequence.clone()
            inputs[:, start + j:stop] = mask_id
            logits = model(input_ids=inputs).logits[:, start + j].float()
            rows[name].append((logits.argmax(-1) == sequence[:, start + j]).float().mean().item())
            if name == "suffix":
                rows["suffix nats"].append(F.cross_entropy(logits, sequence[:, start + j]).item())
    reference = tokenizer.convert_ids_to_tokens(answers[0].tolist())
    shots = "" if args.shots is None else f", {args.shots} shots"
    print(f"{args.model}: accuracy per answer position, {args.count} {args.split}-split problems "
          f"(seed {args.seed}{shots})")
    print("position    " + " ".join(f"{j:>5d}" for j in range(width)))
    print("token       " + " ".join(f"{t[:5]:>5s}" for t in reference))
    for name, values in rows.items():
        print(f"{name:<11s} " + " ".join(f"{v:5.2f}" for v in values))


if __name__ == "__main__":
    main()
