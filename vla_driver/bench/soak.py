"""``vla-driver bench soak``: the closed loop through the node processes for a while (``harness.soak``)."""
from __future__ import annotations

from ..harness.soak import run_soak
from . import emit


def run(minutes: float, work: str = "", domain_id: int = 195) -> dict:
    record = run_soak(minutes, work or None, domain_id)
    for name, rss in record["rss_mb"].items():
        print(f"{name:16s} RSS MB after the first episode {rss['first']:7.1f}, after 2 min {rss['after_warm_up']:7.1f}, "
              f"peak {rss['peak']:7.1f}, final {rss['final']:7.1f} ({rss['growth_pct']:+.2f} %)")
    emit(record)
    return record
