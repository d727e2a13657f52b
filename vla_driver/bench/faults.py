"""``vla-driver bench faults``: the fault-injection suite through the nodes as separate processes (see
``harness.faults``); a table per case and one JSON line."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..harness.faults import run_suite
from . import emit


def run(domain_id: int = 191, work: str = "") -> dict:
    """With ``work``, the node logs, the logger's bags and ``results.json`` (every case) stay there."""
    out = run_suite(work or None, domain_id, progress=lambda line: None)
    if work:
        results = [{**asdict(r), "passed": r.passed, "fallback_within_cycle": r.fallback_within_cycle}
                   for r in out["results"]]
        (Path(work) / "results.json").write_text(json.dumps(
            {"summary": out["summary"], "logged": out["logged"], "results": results, "left_out": out["left_out"]},
            indent=2))
    for name, why in out["left_out"].items():
        print(f"left out: {name} ({why})")
    width = max(len(r.name) for r in out["results"])
    print(f"{'fault':{width}s} {'alive':>5s} {'diag':>5s} {'stop':>5s} {'fallback s':>10s} {'brake':>5s} {'recover s':>9s}")
    for r in out["results"]:
        stop = ("yes" if r.stopped else "NO") if r.stops else ("NO" if r.stopped else "-")
        print(f"{r.name:{width}s} {_yes(r.survived):>5s} {_yes(r.diagnosed):>5s} {stop:>5s} "
              f"{_num(r.fallback_s):>10s} {_yes(r.braked) if r.stops else ('BRAKE' if r.braked else '-'):>5s} {_num(r.recovered_s):>9s}"
              + (f"   {'; '.join(r.notes)}" if r.passed and r.notes else "" if r.passed else f"   FAILED {'; '.join(r.notes)}"))
    logged = out["logged"]
    print(f"logger: {logged['recorded']} of {logged['sent']} odometry messages sent during the suite recorded; "
          f"reported lost by the logger (middleware): {logged['reported_lost']} "
          f"{logged['reported_lost_by_topic'] or ''}; over max_message_mb: {logged['too_large']}; missed by a reader in the "
          f"sending process: {logged['missed_by_witness']}; lost per case: {logged['lost_in'] or 'none'}; "
          f"unflushed when the logger was SIGKILLed: {logged['unflushed_at_sigkill']}; "
          f"not recording (disk full, SIGTERM, SIGKILL) for {', '.join(f'{s:.2f}' for s in logged['logger_down_s'])} s")
    emit(out["summary"])
    return out["summary"]


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
