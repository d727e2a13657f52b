"""Plain data passed between the simulator, the nodes, the policy backends and the logs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .trajectory import Trajectory
from .vocabulary import Decision, DecisionVocabulary

# (height, width) of the embedded simulator's camera image: the one place this size is written down; the
# model's input size (model.config.VisionConfig) and every simulator camera default read it from here.
CAMERA_SIZE = (128, 256)


@dataclass
class Observation:
    """What the policy sees at one instant: the camera image plus ego state and the route instruction."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    speed: float  # m/s, forward
    navigation: str  # e.g. "Go straight for 100m, then turn right"
    accel: float = 0.0  # m/s^2, forward
    yaw_rate: float = 0.0  # rad/s
    stamp: float = 0.0  # seconds (sim or ROS time of the image)

    def ego_features(self) -> np.ndarray:
        return np.array([self.speed, self.accel, self.yaw_rate], dtype=np.float32)


@dataclass
class DecisionResult:
    decision: Decision
    probs: np.ndarray  # (num_speeds, num_paths), sums to 1
    log_prob: float  # log-prob of the chosen candidate
    latency_ms: float = 0.0
    model_version: str = ""
    extras: dict = field(default_factory=dict)

    def to_json_dict(self, vocab: DecisionVocabulary) -> dict:
        return {
            "speed": self.decision.speed,
            "path": self.decision.path,
            "reasoning": self.decision.reasoning,
            "log_prob": round(float(self.log_prob), 6),
            "probabilities": {
                f"{s}, {p}": round(float(self.probs[i, j]), 6)
                for i, s in enumerate(vocab.speeds)
                for j, p in enumerate(vocab.paths)
            },
            "model_version": self.model_version,
            "latency_ms": round(float(self.latency_ms), 3),
        }


class DrivingPolicy(Protocol):
    """What every backend (torch, onnxruntime, tensorrt) and the simulator expert provide."""

    vocab: DecisionVocabulary

    def decide(self, obs: Observation, sample: bool = False, think: bool = False) -> DecisionResult: ...

    def plan(self, obs: Observation, decision: Decision) -> Trajectory: ...
