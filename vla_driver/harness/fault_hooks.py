"""Faults inside a node's model, injected from outside its process, the way fault-injection rigs do it: the
node runs its own ``main`` unchanged, but every backend's ``plan`` first looks at a trigger folder the rig
writes to. ``plan_raises`` there: plan raises (a backend failing mid-drive); ``plan_slow_ms`` holding a
number: plan takes that much longer (inference slower than ``deadline_ms``). The first faulty call writes
its start (``time.monotonic()``, one clock for every process on the machine) to ``<trigger>.seen``: the rig
times the fallback from there. Nothing of this is imported by the runtime: only the fault rig starts a node
through :func:`run_node`.
"""
from __future__ import annotations

import functools
import importlib
import time
from pathlib import Path

from ..runtime.graph_policy import GraphPolicy
from ..runtime.policy import TorchPolicy

RAISES, SLOW_MS = "plan_raises", "plan_slow_ms"


class InjectedFault(RuntimeError):
    """What a backend raises while ``plan_raises`` is in the trigger folder."""


def _faulty(plan, triggers: Path):
    @functools.wraps(plan)
    def faulty_plan(self, obs, decision):
        if (triggers / RAISES).exists():
            _seen(triggers / RAISES)
            raise InjectedFault("injected: the inference backend failed")
        slow = triggers / SLOW_MS
        if slow.exists():
            _seen(slow)
            time.sleep(float(slow.read_text() or 0) / 1e3)
        return plan(self, obs, decision)
    return faulty_plan


def _seen(trigger: Path) -> None:
    seen = seen_path(trigger)
    if not seen.exists():
        seen.write_text(repr(time.monotonic()))


def seen_path(trigger: Path) -> Path:
    """Where the first call a trigger affected wrote when it began."""
    return trigger.with_name(trigger.name + ".seen")


def run_node(node: str, triggers: str) -> None:
    """Run ``vla_driver.nodes.<node>``'s ``main`` with every backend's ``plan`` watching ``triggers``."""
    for policy_cls in (TorchPolicy, GraphPolicy):
        policy_cls.plan = _faulty(policy_cls.plan, Path(triggers))
    importlib.import_module(f"vla_driver.nodes.{node}").main()
