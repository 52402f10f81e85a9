"""The full-precision teacher's own post-commit mismatch and stability lag, read raw and read re-masked.

For each zoo model: decode the first N test prompts (the prompts the quality benchmark's diagnostics use) with
the benchmark's decoding, then compute the teacher's post-commit mismatch and p90 stability lag on its own
trajectory twice: from the raw outputs at committed positions (what the benchmark read before) and with each
committed position re-masked (:func:`fair_calib_hf.diagnostics.read_post_commit`). A teacher cannot disagree
with itself for a reason worth measuring, so its values are the floor of the student columns.

    python benchmarks/teacher_post_commit_floor.py zoo:llada-arith zoo:llada-code zoo:dream-arith --count 16
"""
import argparse
import time

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from fair_calib_hf import zoo
from fair_calib_hf.architectures import get_adapter
from fair_calib_hf.decoding import diffusion_generate
from fair_calib_hf.diagnostics import own_diagnostics
from fair_calib_hf.zoo.evaluate import default_decode_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--count", type=int, default=16, help="test prompts (default 16)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    print("| model | prompts | reading | mean-disagree % | never-agree % | lag p90 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        path = zoo.resolve(name)
        task = zoo.task_of(path)
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        family = get_adapter(model).family
        prompts, _ = task.encode(task.examples("test", args.count, seed=0), tok)
        traj = diffusion_generate(model, prompts, config=default_decode_config(task, family)).trajectory
        for remask in (False, True):
            started = time.perf_counter()
            d = own_diagnostics(model, traj, remask=remask)
            print(f"| {name} | {args.count} | {'re-masked' if remask else 'raw'} | {100 * d['mean_disagree']:.1f} | "
                  f"{100 * d['never_agree']:.1f} | {d['lag_p90']:.0f} | {time.perf_counter() - started:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
