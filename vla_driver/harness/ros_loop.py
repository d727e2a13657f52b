"""The closed loop through the real ROS nodes in one process, without ``ros2 launch``.

:func:`run_closed_loop` composes what ``sim.launch.py`` starts: simulator bridge,
decision, action and controller nodes on a MultiThreadedExecutor, all on sim time. The loop is
lockstepped: the action node plans once per camera image and the controller commands once per
trajectory, so the bridge steps as soon as the pipeline has answered. Each run has its own rclpy
Context, so one process can run many episodes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import rclpy
from rclpy.parameter import Parameter
from rclpy.task import Future
from tqdm import tqdm

from ..core.camera_rig import rig_param
from ..core.types import CAMERA_SIZE
from ..model.checkpoint import checkpoint_rig
from ..nodes.action_node import ActionNode
from ..nodes.controller_node import ControllerNode
from ..nodes.decision_node import DecisionNode
from ..nodes.executor import MultiThreadedExecutor
from ..nodes.sim_bridge_node import SimBridgeNode
from ..nodes.spin import frozen_heap, stop_executor
from ..runtime.loading import resolve_checkpoint


@dataclass
class ClosedLoopRun:
    """``result.extras`` holds the bridge figures (cycles, missed_cycles, cycle latency) and node stats."""

    result: object  # vla_driver.core.metrics.EpisodeResult
    frames: list[np.ndarray] = field(default_factory=list)  # camera images, one per cycle (if recorded)
    # per recorded cycle, what a picture needs: time, speed, top-down view, front camera (sim/render.py)
    views: list[dict] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)  # decision JSON as published
    trajectories: list[tuple[float, np.ndarray, bool]] = field(default_factory=list)  # (stamp, poses, fallback)


def _overrides(**values) -> list[Parameter]:
    return [Parameter("use_sim_time", value=True)] + [Parameter(k, value=v) for k, v in values.items()]


def node_stats(node) -> dict:
    """Measured rate/latency plus the node's counters (fallbacks, rejected messages, ...)."""
    return {**node.diagnostics.stats(), **dict(node.diagnostics.counters)}


def run_closed_loop(
    scenario: str = "highway", seed: int = 0, checkpoint: str = "", backend: str = "auto", *,
    duration_s: float | None = None, control_hz: float = 10.0, image_size: tuple[int, int] = CAMERA_SIZE,
    think: bool = False, sample: bool = False, decision_rate_hz: float = 2.0, deadline_ms: float = 1000.0,
    step_timeout_s: float = 1.0, record_frames: bool = False, wall_timeout_s: float | None = None,
    policies: tuple | None = None, domain_id: int | None = None, progress: bool = True,
) -> ClosedLoopRun:
    """Drive one simulator episode through the four ROS nodes in this process.

    The sim waits for the pipeline, so a slow plan costs wall time, not sim time: ``deadline_ms``
    (the action node's stop-trajectory deadline) defaults to 1 s here, so that results depend on
    the policy rather than on the machine's load; the car's config keeps 100 ms.
    ``policies`` = (decision_policy, action_policy) already loaded (e.g. reused across episodes);
    by default each node loads its own from ``checkpoint``/``backend``, as separate processes would.
    Do not pass the same object twice: a policy switches LoRA adapters per call and is not
    safe to call from two threads. Raises TimeoutError if the episode does not finish within
    ``wall_timeout_s`` (default: 30 s + 20x the sim duration, or 10 minutes without one).
    """
    # An in-process loop must not exchange messages with other machines on the network.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if wall_timeout_s is None:
        wall_timeout_s = 30.0 + 20.0 * duration_s if duration_s else 600.0
    decision_policy, action_policy = policies or (None, None)
    bridge_rig = rig_param(decision_policy.rig if decision_policy is not None
                           else checkpoint_rig(resolve_checkpoint(checkpoint)))
    run = ClosedLoopRun(result=None)
    done = Future()
    context = rclpy.Context()
    rclpy.init(args=[], context=context, domain_id=domain_id)  # the command line is not ROS arguments
    nodes, executor = {}, None
    bar = tqdm(total=round(duration_s * control_hz) if duration_s else None, unit="cycle",
               desc=f"{scenario} seed {seed}", disable=not progress, leave=False)
    try:
        common = {"checkpoint": checkpoint, "backend": backend}
        nodes["decision"] = DecisionNode(
            decision_policy, on_decision=lambda text: run.decisions.append(json.loads(text)), context=context,
            parameter_overrides=_overrides(**common, rate_hz=float(decision_rate_hz), think=think, sample=sample),
        )
        nodes["action"] = ActionNode(
            action_policy, on_trajectory=lambda t, traj, fb: run.trajectories.append((t, traj.poses, fb)),
            context=context,
            parameter_overrides=_overrides(**common, rate_hz=float(control_hz), plan_on_image=True,
                                           deadline_ms=float(deadline_ms)),
        )
        nodes["controller"] = ControllerNode(
            context=context,
            parameter_overrides=_overrides(rate_hz=float(control_hz), publish_on_trajectory=True),
        )
        nodes["sim_bridge"] = bridge = SimBridgeNode(
            on_done=done.set_result, on_cycle=lambda _: bar.update(1), record_frames=record_frames,
            context=context,
            parameter_overrides=_overrides(
                scenario=scenario, seed=int(seed), duration_s=float(duration_s or 0.0),
                control_hz=float(control_hz), image_height=int(image_size[0]), image_width=int(image_size[1]),
                rig=bridge_rig,
                step_timeout_s=float(step_timeout_s),
            ),
        )
        executor = MultiThreadedExecutor(num_threads=4, context=context)
        for node in nodes.values():
            executor.add_node(node)
        with frozen_heap():
            executor.spin_until_future_complete(done, timeout_sec=wall_timeout_s)
        if not done.done():
            raise TimeoutError(f"episode not finished after {wall_timeout_s:.0f} s wall time "
                               f"({bridge.cycles} cycles, {bridge.missed_cycles} missed)")
        run.result = done.result()
        run.result.extras["nodes"] = {name: node_stats(node) for name, node in nodes.items()}
        run.frames = bridge.frames or []
        run.views = bridge.views or []
        return run
    finally:
        bar.close()
        if executor is not None:
            stop_executor(executor)
        for node in nodes.values():
            node.destroy_node()
        rclpy.shutdown(context=context)
