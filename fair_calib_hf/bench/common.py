"""Helpers shared by the benchmarks: timing and reporting."""
from __future__ import annotations

import json
import os
import time


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rss_mb() -> float:
    """Resident memory of this process now (MiB), from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through ``path + ".tmp"`` and ``os.replace``, so that a killed run leaves the old
    file or the new one, never half of one (the folder must exist)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def report(title: str, columns: dict, rows: list[dict], json_path: str | None = None) -> None:
    """Print ``title`` and a Markdown table (``columns``: header → function of a row giving the cell), and
    write ``rows`` as JSON to ``json_path`` when given."""
    print(title)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(cell(row)) for cell in columns.values()) + " |")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"title": title, "rows": rows}, f, indent=2)
