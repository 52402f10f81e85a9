"""``python -m fair_calib_hf.bench contention``: how much the main jobs slow down when another process uses the
cores (issue 32).

Each workload runs as a subprocess, timed alone and then beside a fixed CPU-bound **neighbour**: a separate
process doing float32 matrix multiplies (``--neighbour-size``² × ``--neighbour-size``², ``--neighbour-threads``
threads, 2 by default), started by the benchmark right before the workload and stopped right after it. The ratio
*beside / alone* is printed per workload, and the neighbour's own throughput beside the workload against its
throughput alone (measured for ``--neighbour-seconds`` before the workloads), so both sides of the sharing are
visible. With ``--repeats R`` each workload runs R times alone and R times beside, alternating; the best time
of each gives the ratio, and every run's time is printed (a shared or throttled machine varies by tens of percent
from run to run).

Workloads (``--workloads``):

* ``quickstart``: ``python examples/quickstart.py`` (the README's main job: RTN and FAIR-Calib on
  ``zoo:dream-arith``, save, reload, score);
* ``quantize``: ``fair-calib quantize zoo:dream-arith-fewshot --out DIR --no-progress`` at its defaults.

``--quick`` replaces them by small versions (``quickstart --method quarot --count 8``; ``quantize zoo:dream-arith
--method rtn --no-report``): a smoke test of the benchmark itself, not a measurement. The workloads inherit this
process's environment (``OMP_NUM_THREADS`` ..., as a user would run them) unless ``--threads N`` sets
``OMP_NUM_THREADS`` for them. Run on an otherwise idle machine: the numbers mean nothing beside a third job.

Targets (issue 32): beside the neighbour each workload within 2.5× its time alone. Output: a Markdown table and,
with ``--json FILE``, the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from .common import write_text_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEIGHBOUR = """
import signal, sys, time, torch
torch.set_num_threads({threads})
a = torch.randn({size}, {size})
count, start, stop = 0, time.perf_counter(), False
def handler(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, handler)
print("ready", flush=True)
while not stop:
    a @ a
    count += 1
print(count, time.perf_counter() - start, flush=True)
"""


def workload_commands(quick: bool, out: str) -> dict[str, list[str]]:
    """``{name: argv}`` of the workloads, each writing under ``out`` (a fresh folder per run is made by the
    caller: ``{out}`` in an argument is replaced by it)."""
    py = sys.executable
    if quick:
        return {"quickstart": [py, os.path.join(ROOT, "examples", "quickstart.py"), "--method", "quarot", "--count",
                               "8", "--out", "{out}", "--overwrite"],
                "quantize": [py, "-m", "fair_calib_hf_cli", "quantize", "zoo:dream-arith", "--out", "{out}",
                             "--method", "rtn", "--no-report", "--no-progress", "--overwrite"]}
    return {"quickstart": [py, os.path.join(ROOT, "examples", "quickstart.py"), "--out", "{out}", "--overwrite"],
            "quantize": [py, "-m", "fair_calib_hf_cli", "quantize", "zoo:dream-arith-fewshot", "--out", "{out}",
                         "--no-progress", "--overwrite"]}


class Neighbour:
    """The CPU-bound neighbour process (see the module docstring): ``start()`` returns once it computes,
    ``stop()`` ends it and returns its matmuls per second over its lifetime."""

    def __init__(self, threads: int, size: int):
        self.threads, self.code = threads, NEIGHBOUR.format(threads=threads, size=size)
        self.proc = None

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.proc = subprocess.Popen([sys.executable, "-c", self.code], stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"the neighbour process did not start (said {line!r})")

    def stop(self) -> float:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        count, seconds = out.split()[-2:]
        self.proc = None
        return int(count) / float(seconds)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_once(argv: list[str], env: dict) -> float:
    """Wall seconds of one workload run in a fresh output folder; ``RuntimeError`` with its stderr tail if it
    fails."""
    with tempfile.TemporaryDirectory(prefix="fair-calib-contention-") as tmp:
        args = [a.replace("{out}", os.path.join(tmp, "out")) for a in argv]
        start = time.perf_counter()
        done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def measure(workloads: dict[str, list[str]], repeats: int, neighbour: Neighbour, neighbour_seconds: float,
            env: dict) -> list[dict]:
    """One row per workload: best seconds alone and beside the neighbour, their ratio, and the neighbour's
    matmuls per second alone and beside."""
    neighbour.start()
    try:
        time.sleep(neighbour_seconds)
    finally:
        alone_rate = neighbour.stop()
    rows = []
    for name, argv in workloads.items():
        alone, beside, rates = [], [], []
        for _ in range(repeats):
            alone.append(run_once(argv, env))
            neighbour.start()
            try:
                beside.append(run_once(argv, env))
            finally:
                rates.append(neighbour.stop())
        rows.append({"workload": name, "alone_s": round(min(alone), 2), "beside_s": round(min(beside), 2),
                     "alone_runs_s": [round(t, 2) for t in alone], "beside_runs_s": [round(t, 2) for t in beside],
                     "ratio": round(min(beside) / min(alone), 2), "neighbour_alone_per_s": round(alone_rate, 2),
                     "neighbour_beside_per_s": round(max(rates), 2),
                     "neighbour_slowdown": round(alone_rate / max(rates), 2), "repeats": repeats})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench contention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=("quickstart", "quantize"),
                        default=["quickstart", "quantize"])
    parser.add_argument("--quick", action="store_true", help="small workloads: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, default=1, help="runs alone and beside per workload (default 1)")
    parser.add_argument("--neighbour-threads", type=int, default=2, help="threads of the neighbour (default 2)")
    parser.add_argument("--neighbour-size", type=int, default=1024, help="matrix size of its matmuls (default 1024)")
    parser.add_argument("--neighbour-seconds", type=float, default=5.0,
                        help="seconds the neighbour's rate alone is measured (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the workloads (default: unset)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.neighbour_threads < 1 or args.neighbour_size < 1:
        raise SystemExit("--repeats, --neighbour-threads and --neighbour-size must be positive")
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    commands = workload_commands(args.quick, "{out}")
    workloads = {name: commands[name] for name in args.workloads}
    neighbour = Neighbour(args.neighbour_threads, args.neighbour_size)
    try:
        rows = measure(workloads, args.repeats, neighbour, args.neighbour_seconds, env)
    finally:
        neighbour.kill()
    lines = ["| workload | alone s | beside the neighbour s | beside / alone | runs alone s | runs beside s "
             "| neighbour matmul/s alone | beside | neighbour slowdown |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['alone_s']} | {r['beside_s']} | {r['ratio']} "
              f"| {', '.join(map(str, r['alone_runs_s']))} | {', '.join(map(str, r['beside_runs_s']))} "
              f"| {r['neighbour_alone_per_s']} | {r['neighbour_beside_per_s']} | {r['neighbour_slowdown']} |"
              for r in rows]
    print("\n".join(lines))
    print(f"\nneighbour: {args.neighbour_threads} threads of {args.neighbour_size}² fp32 matmuls; workloads "
          f"{'(quick) ' if args.quick else ''}with OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}; "
          f"{os.cpu_count()} CPUs; best of {args.repeats}")
    if args.json:
        write_text_atomic(args.json, json.dumps({"rows": rows, "quick": args.quick,
                                                 "neighbour_threads": args.neighbour_threads,
                                                 "neighbour_size": args.neighbour_size,
                                                 "threads": args.threads}, indent=2))
