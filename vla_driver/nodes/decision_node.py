"""Decision node: camera + odometry + navigation -> a (speed, path) decision as JSON, ~2 Hz (the slow system).

Hot swap (this node and the action node): setting the ``checkpoint`` parameter at run time loads that
checkpoint in a background thread; the node adopts it at the start of its next cycle, so no cycle is
skipped and none runs half on each model. The new model_version shows in /diagnostics and in every
decision JSON. A checkpoint that fails to load leaves the old policy running, with an ERROR diagnostic.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String

from vla_driver.core.types import Observation

from .convert import ObservationAssembler, decision_to_string
from .diagnostics import ERROR, OK, NodeDiagnostics
from .params import declare_params, param, require_positive


@dataclass
class DecisionParams:
    checkpoint: str = param("", "policy checkpoint directory; empty = the embedded default")
    backend: str = param("auto", "inference backend: auto, torch, onnxruntime or tensorrt")
    rate_hz: float = param(2.0, "decision rate (Hz)")
    think: bool = param(False, "slow mode: generate reasoning text before the answer")
    sample: bool = param(False, "sample the decision instead of taking the most likely one")
    max_input_age_s: float = param(1.0, "camera or odometry older than this (s): no decision, ERROR")
    default_navigation: str = param("Follow the road.", "instruction used until one arrives on navigation")

    def __post_init__(self):
        require_positive(self, "rate_hz", "max_input_age_s")


def load_policy(checkpoint: str, backend: str):
    from vla_driver.runtime.policy import inference_threads
    from vla_driver.runtime.policy import load_policy as load

    return load(checkpoint, backend, threads=inference_threads())


def blank_observation(navigation: str) -> Observation:
    """A black frame at standstill, for warming a policy up before the first real input."""
    return Observation(image=np.zeros((128, 256, 3), np.uint8), speed=0.0, navigation=navigation)


class HotSwap:
    """Policy hot swap for a node with ``checkpoint``/``backend`` parameters, ``policy`` and ``diagnostics``.

    Mix in before ``Node``; call :meth:`enable_hot_swap` once ``policy`` and ``diagnostics`` exist, and
    :meth:`adopt_new_policy` at the start of every cycle. ``checkpoint`` is the one writable parameter.
    """

    def declare_parameter(self, name, value=None, descriptor=None, ignore_override=False):
        if name == "checkpoint" and descriptor is not None:
            descriptor.read_only = False
        return super().declare_parameter(name, value, descriptor, ignore_override)

    def enable_hot_swap(self, warm_up: Callable[[object], None]) -> None:
        """``warm_up(policy)`` runs in the loader thread, so a new policy's first cycle is not a cold one."""
        self._swap_warm_up, self._swap_lock = warm_up, threading.Lock()
        self._swap_request, self._ready_policy = 0, None  # latest request number; a loaded, not yet adopted policy
        self.diagnostics.values["model_version"] = str(self.policy.model_version)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        for p in parameters:
            if p.name == "checkpoint":
                with self._swap_lock:
                    self._swap_request += 1
                    request = self._swap_request
                threading.Thread(target=self._load, args=(str(p.value), request), daemon=True,
                                 name=f"load-checkpoint-{request}").start()
        return SetParametersResult(successful=True)

    def _load(self, checkpoint: str, request: int) -> None:
        try:
            policy = load_policy(checkpoint, self.params.backend)
            self._swap_warm_up(policy)
        except Exception as e:  # noqa: BLE001 - any load failure keeps the running policy
            self.diagnostics.count("swap_errors")
            self.diagnostics.values["last_swap_error"] = f"{checkpoint}: {e}"
            self.diagnostics.set_status(ERROR, f"checkpoint {checkpoint!r} not loaded, keeping model "
                                               f"{self.policy.model_version}: {e}")
            self.get_logger().error(f"checkpoint {checkpoint!r} failed to load: {e!r}")
            return
        with self._swap_lock:
            if request == self._swap_request:  # a newer request supersedes this one
                self._ready_policy = policy

    def adopt_new_policy(self) -> bool:
        """Switch to a freshly loaded policy, if one is waiting (between cycles, never within one)."""
        with self._swap_lock:
            policy, self._ready_policy = self._ready_policy, None
        if policy is None:
            return False
        old, self.policy = self.policy.model_version, policy
        self.diagnostics.backend = policy.backend_name
        self.diagnostics.values["model_version"] = str(policy.model_version)
        self.diagnostics.count("swaps")
        self.get_logger().info(f"hot swap: model {old} -> {policy.model_version} ({policy.backend_name})")
        return True


class DecisionNode(HotSwap, Node):
    TOPICS = ("image", "odom", "navigation", "decision")

    def __init__(self, policy=None, on_decision: Callable[[str], None] | None = None, **node_kwargs):
        super().__init__("decision_node", **node_kwargs)
        self.params = declare_params(self, DecisionParams)
        self.policy = policy or load_policy(self.params.checkpoint, self.params.backend)
        self.on_decision = on_decision
        self.inputs = ObservationAssembler(self.params.default_navigation)
        self.diagnostics = NodeDiagnostics(self, backend=self.policy.backend_name)
        self._last_stamp = None
        try:
            self._warm_up_policy(self.policy)
        except Exception as e:  # noqa: BLE001 - a real failure shows up again, with a diagnostic, per cycle
            self.get_logger().warn(f"warm-up decide failed: {e!r}")
        self.enable_hot_swap(self._warm_up_policy)

        guard = self.diagnostics.guard
        self.create_subscription(Image, "image", guard("image", self.inputs.on_image), qos_profile_sensor_data)
        self.create_subscription(Odometry, "odom", guard("odom", self.inputs.on_odometry), 10)
        self.create_subscription(String, "navigation", guard("navigation", self.inputs.on_navigation), 10)
        self.publisher = self.create_publisher(String, "decision", 10)
        # Own group: a long decide() must not hold up the input callbacks.
        self.create_timer(1.0 / self.params.rate_hz, self.decide, MutuallyExclusiveCallbackGroup())
        self.get_logger().info(
            f"deciding at {self.params.rate_hz} Hz with {self.policy.backend_name} "
            f"(model {self.policy.model_version}, think={self.params.think})"
        )

    def _warm_up_policy(self, policy) -> None:
        policy.decide(blank_observation(self.params.default_navigation))

    def decide(self) -> None:
        self.adopt_new_policy()
        ages = self.inputs.ages(self.get_clock().now().nanoseconds * 1e-9)
        for name, age in ages.items():
            self.diagnostics.input_age(name, age)
        stale = [name for name, age in ages.items() if age is None or age > self.params.max_input_age_s]
        if stale:
            self.diagnostics.set_status(ERROR, f"no fresh {' and '.join(stale)}: not deciding")
            return
        obs = self.inputs.observation()
        if obs.stamp == self._last_stamp:
            return  # this image was already decided on
        start = time.perf_counter()
        try:
            result = self.policy.decide(obs, sample=self.params.sample, think=self.params.think)
        except Exception as e:  # noqa: BLE001 - a model failure must not stop the node
            self.diagnostics.count("model_errors")
            self.diagnostics.set_status(ERROR, f"decide failed: {e}")
            self.get_logger().error(f"decide failed: {e!r}", throttle_duration_sec=1.0)
            return
        result.latency_ms = (time.perf_counter() - start) * 1e3
        self._last_stamp = obs.stamp
        msg = decision_to_string(result, self.policy.vocab, obs.stamp)
        self.publisher.publish(msg)
        if self.on_decision is not None:
            self.on_decision(msg.data)
        self.diagnostics.cycle_done(result.latency_ms)
        self.diagnostics.set_status(OK, f"{result.decision.speed}, {result.decision.path}")


def main(args=None) -> None:
    from .compose import spin_standalone

    spin_standalone(DecisionNode, args)
