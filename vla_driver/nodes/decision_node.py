"""Decision node: camera + odometry + navigation -> a (speed, path) decision as JSON, ~2 Hz (the slow system).

Setting ``checkpoint`` at run time hot-swaps the model (:mod:`.hot_swap`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from std_msgs.msg import String

from .camera_set import PRESET_CAMERAS, CameraSet, camera_topic
from .convert import decision_to_string
from .diagnostics import ERROR, OK, WARN, NodeDiagnostics
from .hot_swap import HotSwap, ModelParams, blank_observation, load_policy
from .inputs import ObservationAssembler
from .params import declare_params, param, require_positive
from .spin import spin_standalone


@dataclass
class DecisionParams(ModelParams):
    rate_hz: float = param(2.0, "decision rate (Hz)")
    think: bool = param(False, "slow mode: generate reasoning text before the answer")
    sample: bool = param(False, "sample the decision instead of taking the most likely one")
    max_input_age_s: float = param(1.0, "camera or odometry older than this (s): no decision, ERROR")
    default_navigation: str = param("Follow the road.", "instruction used until one arrives on navigation")

    POSITIVE = ("rate_hz", "max_input_age_s")  # > 0; their descriptors carry the range

    def __post_init__(self):
        require_positive(self, *self.POSITIVE)


class DecisionNode(HotSwap, Node):
    TOPICS = ("image", "odom", "navigation", "decision", *(camera_topic(n) for n in PRESET_CAMERAS))

    def __init__(self, policy=None, on_decision: Callable[[str], None] | None = None, **node_kwargs):
        super().__init__("decision_node", **node_kwargs)
        self.params = declare_params(self, DecisionParams)
        self.policy = policy or load_policy(self.params.checkpoint, self.params.backend, self.params.trusted_keys)
        self.on_decision = on_decision
        self.inputs = ObservationAssembler(self.params.default_navigation,
                                           CameraSet(self.policy.rig, self.params.camera_slop_s, self.policy.history))
        self.diagnostics = NodeDiagnostics(self)
        self.diagnostics.set_backend(self.policy)
        self._last_stamp = None
        try:
            self._warm_up_policy(self.policy)
        except Exception as e:  # noqa: BLE001 - a real failure shows up again, with a diagnostic, per cycle
            self.get_logger().warn(f"warm-up decide failed: {e!r}")
        self.enable_hot_swap(self._warm_up_policy)

        guard = self.diagnostics.guard
        self.inputs.cameras.subscribe(self, guard, qos_profile_sensor_data)
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
        policy.decide(blank_observation(self.params.default_navigation, policy.rig, policy.history))

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
        lagging = self.inputs.cameras.lagging()
        level, message = (WARN, f"{' and '.join(lagging)} lagging; ") if lagging else (OK, "")
        self.diagnostics.set_status(level, f"{message}{result.decision.speed}, {result.decision.path}")


def main(args=None) -> None:
    spin_standalone(DecisionNode, args)
