"""torch eager vs ONNX Runtime at batch 1: decision scorer, action planner and one full cycle.

Each backend runs in its own spawned process so its peak resident memory is its own.
"""
from __future__ import annotations

import multiprocessing as mp

import torch

from ..runtime.loading import load_policy
from ..sim.highway import DrivingSim
from . import child_result, emit, peak_rss_mb, percentiles, time_calls


def _measure(backend: str, checkpoint: str, iters: int, threads: int, queue) -> None:

    torch.set_num_threads(threads)
    try:
        policy = load_policy(checkpoint, backend=backend, threads=threads)
        obs = frame_for_bench(policy)
        decision = policy.decide(obs).decision
    except Exception as err:  # noqa: BLE001 - reported by the parent as one line
        queue.put({"error": f"{backend}: {err}"})
        return
    results = {
        "backend": policy.backend_name,
        "decision": percentiles(time_calls(lambda: policy.decision_table([obs]), iters)),
        "action": percentiles(time_calls(lambda: policy.trajectory_modes([obs], [decision]), iters)),
        "cycle": percentiles(time_calls(lambda: policy.plan(obs, policy.decide(obs).decision), iters)),
        "peak_rss_mb": peak_rss_mb(),
    }
    queue.put(results)


def frame_for_bench(policy):
    """A real simulator frame as ``policy`` sees it (its cameras and history): a held-out highway episode's
    first."""
    sim = DrivingSim.for_policy(policy, "highway", seed=100_000)
    try:
        return sim.reset()
    finally:
        sim.close()


def run(checkpoint: str = "", iters: int = 100, threads: int = 2) -> dict:
    load_policy(checkpoint, backend="onnxruntime")  # export once, outside the timed processes
    ctx = mp.get_context("spawn")
    out = {}
    for backend in ("torch", "onnxruntime"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(backend, checkpoint, iters, threads, queue))
        proc.start()
        out[backend] = child_result(proc, queue)
        if "error" in out[backend]:
            raise RuntimeError(out[backend]["error"])
    t, o = out["torch"], out["onnxruntime"]
    print(f"batch 1, {threads} threads, {iters} iterations each")
    print(f"{'graph':<10}{'torch p50':>11}{'torch p99':>11}{'ORT p50':>10}{'ORT p99':>10}{'speedup':>9}")
    for key in ("decision", "action", "cycle"):
        print(f"{key:<10}{t[key]['p50']:>11.2f}{t[key]['p99']:>11.2f}{o[key]['p50']:>10.2f}{o[key]['p99']:>10.2f}"
              f"{t[key]['p50'] / o[key]['p50']:>9.2f}")
    print(f"peak RSS: torch {t['peak_rss_mb']:.0f} MB, onnxruntime {o['peak_rss_mb']:.0f} MB "
          f"(ORT backend = {o['backend']})")
    record = {"bench": "backends", "torch_decision_ms_p50": t["decision"]["p50"],
              "ort_decision_ms_p50": o["decision"]["p50"], "torch_action_ms_p50": t["action"]["p50"],
              "ort_action_ms_p50": o["action"]["p50"], "torch_cycle_ms_p50": t["cycle"]["p50"],
              "torch_cycle_ms_p99": t["cycle"]["p99"], "ort_cycle_ms_p50": o["cycle"]["p50"],
              "ort_cycle_ms_p99": o["cycle"]["p99"], "torch_peak_rss_mb": t["peak_rss_mb"],
              "ort_peak_rss_mb": o["peak_rss_mb"], "speedup": t["cycle"]["p50"] / o["cycle"]["p50"],
              "threads": threads}
    emit(record)
    return record
