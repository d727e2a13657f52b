"""Benchmarks: figures measured side by side in one run, each ending with one JSON line."""
from __future__ import annotations

import json
import math
import resource
import time
import tracemalloc
from collections.abc import Callable
from queue import Empty

import numpy as np


def time_calls(fn: Callable[[], object], iters: int, warmup: int = 3,
               sync: Callable[[], object] | None = None) -> np.ndarray:
    """Wall-clock milliseconds of ``iters`` calls after ``warmup`` unmeasured ones; ``sync`` (e.g.
    ``torch.cuda.synchronize``) waits for a device's queued work inside each timing."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def percentiles(ms: np.ndarray) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which belongs to its own address space. (ru_maxrss is
    kept across exec, so a spawned child would report its parent's peak if that was higher.)"""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_result(proc, queue, poll_s: float = 5.0) -> dict:
    """What a measuring child process put on ``queue``, or an ``error`` if it died first (killed for memory,
    say) instead of waiting on a result that will never come."""
    while True:
        try:
            result = queue.get(timeout=poll_s)
            proc.join()
            return result
        except Empty:
            if not proc.is_alive():
                return {"error": f"the measuring process died (exit code {proc.exitcode})"}


def peak_python_mb(fn: Callable[[], object]) -> float:
    """Peak Python-heap allocation of one call (torch/ORT native buffers are not counted)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def emit(record: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)


def json_safe(value):
    """JSON-safe: nan/inf -> None, floats rounded."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value
