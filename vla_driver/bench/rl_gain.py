"""``vla-driver bench rl-gain`` (and ``eval --compare``): SFT vs SFT+RL on the same held-out closed-loop
episodes, with the paired difference of their driving scores and its 95 % CI."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..rl.gate import compare_policies, format_comparison
from . import emit, json_safe


def run(sft: str, rl: str, scenarios: list[str], seeds: list[int], backend: str = "torch",
        duration_s: float | None = None, workers: int = 0, threads: int = 2, json_out: str = "") -> dict:
    comparison = compare_policies(sft, rl, scenarios, seeds=seeds, backend=backend, duration_s=duration_s,
                                  workers=workers, threads=threads)
    print(format_comparison(comparison, ("SFT", "SFT+RL")))
    if json_out:
        Path(json_out).write_text(json.dumps(json_safe(comparison), indent=1))
    o = comparison["overall"]
    record = {"bench": "rl_gain", "sft_driving_score": o["baseline"]["driving_score"],
              "rl_driving_score": o["candidate"]["driving_score"], "sft_success_rate": o["baseline"]["success_rate"],
              "rl_success_rate": o["candidate"]["success_rate"], "ds_diff": o["ds_diff"],
              "ds_diff_ci95": None if math.isnan(o["ds_diff_ci95"]) else o["ds_diff_ci95"],
              "episodes": o["baseline"]["episodes"]}
    emit(record)
    return record
