"""How the LLaDA-arith quality table's decoding setting was chosen, without touching the test split.

Scores the float model and W4A4 RTN on 256 **calibration-split** problems (seed 123) at 1, 2 and 4 tokens per
step (steps 32 / 16 / 8 for the 32-token answer), with blocks of 8 and of 32. The benchmark's 4-tokens-per-step
table uses the first setting where RTN loses at least 10 points here.

    python benchmarks/choose_parallel_decoding.py zoo:llada-arith
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
    task = zoo.task_of(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    fp = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    rtn = AutoModel.from_pretrained(path, trust_remote_code=True,
                                    quantization_config=FairCalibConfig(method="rtn")).eval()
    examples = task.examples("calibration", 256, seed=123)  # development problems: never the test split
    for steps in (32, 16, 8):
        for block in (8, 32):
            cfg = default_decode_config(task, "llada", record=False, steps=steps, block_length=block)
            acc = [task.accuracy(generate_answers(m, tok, task, examples, cfg)[0], examples) for m in (fp, rtn)]
            print(f"steps {steps} block {block}: FP {acc[0]:.3f} RTN {acc[1]:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "zoo:llada-arith")
