"""How many CPU threads the library's own work uses (issue 32).

* :func:`adaptive_threads` (a context manager around a job: calibration, diffusion decoding) and
  :func:`rebalance` (called at the job's step boundaries) set ``torch.set_num_threads`` from the cores that other
  processes leave free, never above the count the job started with, and restore that count when the job ends. On
  a shared machine a 2-thread OpenMP region whose second thread is descheduled makes the first one wait at every
  barrier (thousands of regions per second in calibration and decoding), so a job beside a busy neighbour runs
  several times slower with two threads than with one.
* :func:`single_threaded` runs a computation on one thread: the few reductions whose fp32 result would otherwise
  depend on the thread count (MKL splits the long inner dimension of a GEMM with a small output across threads),
  so that calibration gives the same bits whatever the thread count, and changing it mid-job changes nothing
  but the time.

Policy: the environment variable ``FAIR_CALIB_THREADS`` is ``adaptive`` (default) or ``fixed`` (never change
torch's thread count); :func:`set_policy` changes it in-process. Other processes' load is read with ``psutil``
(system-wide busy CPU time minus this process's own, over the interval since the last decision, on the CPUs this
process may run on); where it cannot be read the policy acts as ``fixed``.
"""
from __future__ import annotations

import collections
import contextlib
import os
import threading
import time

import torch

POLICY_ENV = "FAIR_CALIB_THREADS"
POLICIES = ("adaptive", "fixed")
#: seconds between two decisions (and the shortest interval the others' load is averaged over)
INTERVAL_S = 1.0

_lock = threading.RLock()
_policy: str | None = None


def policy() -> str:
    """The thread policy in force: :func:`set_policy`'s, else ``$FAIR_CALIB_THREADS``, else ``"adaptive"``.
    ``ValueError`` naming the variable for another value."""
    if _policy is not None:
        return _policy
    value = os.environ.get(POLICY_ENV, "adaptive").strip().lower() or "adaptive"
    if value not in POLICIES:
        raise ValueError(f"{POLICY_ENV}={value!r}: expected one of {', '.join(POLICIES)} ('adaptive' lowers the "
                         "thread count while other processes use the cores; 'fixed' keeps torch's)")
    return value


def set_policy(value: str | None) -> None:
    """Set the policy for this process (``"adaptive"`` or ``"fixed"``; ``None``: back to the environment's);
    ``ValueError`` for another value."""
    global _policy
    if value is not None and value not in POLICIES:
        raise ValueError(f"set_policy: expected one of {', '.join(POLICIES)} or None, got {value!r}")
    _policy = value


class CpuLoad:
    """Cores busy with other processes, averaged since the last :meth:`sample`: ``(Δ busy time of the allowed
    CPUs − Δ this process's CPU time) / Δ wall time``, in cores (0 .. number of allowed CPUs). Busy time counts
    everything but idle and I/O wait (steal counts as busy: a hypervisor's other guests are neighbours too)."""

    def __init__(self):
        import psutil  # a dependency of accelerate, hence of this package

        self._psutil = psutil
        self._process = psutil.Process()
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            self.cpus = list(range(psutil.cpu_count() or 1))
        self._last = self._read()

    def _read(self) -> tuple[float, float, float]:
        per_cpu = self._psutil.cpu_times(percpu=True)
        busy = 0.0
        for i in self.cpus:
            if i < len(per_cpu):
                t = per_cpu[i]
                busy += sum(t) - t.idle - getattr(t, "iowait", 0.0)
        own = self._process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def elapsed(self) -> float:
        """Wall seconds since the last sample."""
        return time.monotonic() - self._last[0]

    def sample(self) -> float:
        """Cores used by other processes since the last sample (≥ 0), and start a new interval."""
        now = self._read()
        wall = max(now[0] - self._last[0], 1e-9)
        others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last = now
        return min(max(others, 0.0), float(len(self.cpus)))


def threads_for(free_cores: float, ceiling: int) -> int:
    """The thread count for ``free_cores`` idle cores: the nearest whole number, at least 1, at most
    ``ceiling`` (the count the job started with)."""
    return max(1, min(int(ceiling), int(free_cores + 0.5)))


_ceiling: int | None = None  # the thread count the outermost adaptive_threads block started with; None: no job
_depth = 0
_load: CpuLoad | None = None
_load_failed = False
#: ``(others' cores, threads chosen)`` of the last decisions in this process (tests and benchmarks read it)
decisions: collections.deque[tuple[float, int]] = collections.deque(maxlen=10_000)
_last_choice: int | None = None


def _cpu_load() -> CpuLoad | None:
    """The process-wide load monitor (made on first use; ``None`` where the load cannot be read)."""
    global _load, _load_failed
    if _load is None and not _load_failed:
        try:
            _load = CpuLoad()
        except Exception:  # psutil missing, /proc unreadable: act as the fixed policy
            _load_failed = True
    return _load


@contextlib.contextmanager
def adaptive_threads():
    """Within the block, :func:`rebalance` may lower torch's thread count (never above the count at entry) while
    other processes use the cores, and raise it again when they stop; the count at entry is restored on exit.
    Nested uses share the outermost job. Decisions carry over from one job to the next (a decode of many short
    batches starts at the last count chosen), and the load is averaged over the time since the last decision,
    inside jobs or not. A no-op under the ``fixed`` policy, with one thread, or where the load cannot be read.
    ``ValueError`` for a bad ``$FAIR_CALIB_THREADS`` (:func:`policy`). Usable as a decorator."""
    global _ceiling, _depth
    adaptive = policy() == "adaptive"
    with _lock:
        _depth += 1
        outer = _depth == 1
        if outer:
            threads = torch.get_num_threads()
            _ceiling = threads if adaptive and threads > 1 and _cpu_load() is not None else None
            if _ceiling is not None and _last_choice is not None and _last_choice < _ceiling:
                torch.set_num_threads(_last_choice)
    try:
        rebalance()
        yield
    finally:
        with _lock:
            _depth -= 1
            if outer:
                if _ceiling is not None and torch.get_num_threads() != _ceiling:
                    torch.set_num_threads(_ceiling)
                _ceiling = None


def rebalance() -> int:
    """At a step boundary of a job inside :func:`adaptive_threads`: once at least :data:`INTERVAL_S` seconds have
    passed since the last decision, set torch's thread count from the cores other processes left free over that
    interval (:func:`threads_for`). Cheap otherwise (one clock read). Returns the thread count in force."""
    global _last_choice
    load = _load
    if _ceiling is None or load is None or load.elapsed() < INTERVAL_S:
        return torch.get_num_threads()
    with _lock:
        if _ceiling is None:
            return torch.get_num_threads()
        others = load.sample()
        threads = threads_for(len(load.cpus) - others, _ceiling)
        decisions.append((round(others, 3), threads))
        _last_choice = threads
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads


@contextlib.contextmanager
def single_threaded():
    """Run the block with one intra-op thread (restored on exit): for reductions whose fp32 result must not
    depend on the thread count. On a CUDA tensor's computation this changes nothing but the CPU side."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
