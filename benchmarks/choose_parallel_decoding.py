"""How a quality table's decoding setting is chosen, without touching the test split.

Scores the float model and W4A4 RTN on 256 **calibration-split** problems (seed 123) at 1, 2, 4 and 8 tokens per
step (steps = answer length / tokens per step) with the family's default sampler
(:func:`fair_calib_hf.zoo.evaluate.default_decode_config`; LLaDA-style: also blocks of 32 next to the default 8).

Rules the tables use:
* ``zoo:llada-arith``, 4-tokens-per-step table: the first setting where RTN loses at least 10 points here;
* the paper-regime testbeds (``zoo:*-fewshot``): the fastest setting (most tokens per step) at which the
  float model keeps at least 90 % exact match here (FP only: the rule does not look at any quantized model).

    python benchmarks/choose_parallel_decoding.py zoo:dream-arith-fewshot
"""
import sys

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from fair_calib_hf import FairCalibConfig, zoo
from fair_calib_hf.zoo.evaluate import default_decode_config, generate_answers


def main(name: str) -> None:
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    path = zoo.resolve(name)
    task, family = zoo.task_of(path), zoo.family_of(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    fp = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    rtn = AutoModel.from_pretrained(path, trust_remote_code=True,
                                    quantization_config=FairCalibConfig(method="rtn")).eval()
    examples = task.examples("calibration", 256, seed=123)  # development problems: never the test split
    blocks = (None, 32) if family == "llada" else (None,)
    for per_step in (1, 2, 4, 8):
        for block in blocks:
            extra = {} if block is None else {"block_length": block}
            cfg = default_decode_config(task, family, record=False, steps=task.gen_length // per_step, **extra)
            acc = [task.accuracy(generate_answers(m, tok, task, examples, cfg)[0], examples) for m in (fp, rtn)]
            print(f"{per_step} tokens/step (steps {cfg.steps}, block {cfg.block_length}): FP {acc[0]:.3f} "
                  f"RTN {acc[1]:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "zoo:llada-arith")
