"""What the decision and action nodes share: the model parameters, loading a policy, and hot swap.

Hot swap: setting the ``checkpoint`` parameter at run time loads that checkpoint in a background thread;
the node adopts it at the start of its next cycle, so no cycle is skipped and none runs half on each
model. The new model_version shows in /diagnostics and in every decision JSON. A checkpoint that fails
to load leaves the old policy running, with an ERROR diagnostic.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rcl_interfaces.msg import SetParametersResult

from vla_driver.core.camera_rig import CameraRig, rig_label
from vla_driver.core.types import CAMERA_SIZE, Observation
from vla_driver.runtime.loading import inference_threads
from vla_driver.runtime.loading import load_policy as runtime_load_policy

from .diagnostics import ERROR
from .params import param


@dataclass
class ModelParams:
    """The model a node runs; both model nodes declare these first."""

    checkpoint: str = param("", "policy checkpoint directory; empty = the embedded default")
    backend: str = param("auto", "inference backend: auto, torch, onnxruntime or tensorrt")
    camera_slop_s: float = param(0.05, "cameras of a rig whose newest frames lie further apart than this (s) form no set; WARN names the late one")
    trusted_keys: str = param("", "comma-separated ed25519 public keys (files, or directories of *.pub); when set, only a checkpoint signed by one of them loads, at start and at hot swap")


def load_policy(checkpoint: str, backend: str, trusted_keys: str = ""):
    """A node's policy, with torch threads shared out among the two model nodes of one machine; with
    ``trusted_keys``, only a checkpoint one of them signed."""
    return runtime_load_policy(checkpoint, backend, threads=inference_threads(), trusted_keys=trusted_keys)


def blank_observation(navigation: str, rig: CameraRig | None = None, history: int = 1) -> Observation:
    """Black frames at standstill (each view of ``rig`` x ``history``, at the model's size), for warming a
    policy up before the first real input."""
    image = np.zeros((*CAMERA_SIZE, 3), np.uint8) if rig is None else rig.blank_views(history)
    return Observation(image=image, speed=0.0, navigation=navigation)


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
            policy = load_policy(checkpoint, self.params.backend, self.params.trusted_keys)
            if policy.rig != self.policy.rig:
                raise ValueError(f"it drives from {rig_label(policy.rig)}; this node subscribes to the cameras of "
                                 f"{rig_label(self.policy.rig)} (restart the node to change cameras)")
            if policy.history != self.policy.history:
                raise ValueError(f"it sees {policy.history} frame(s) per camera, this node keeps "
                                 f"{self.policy.history} (restart the node to change the history)")
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
        self.diagnostics.set_backend(policy)
        self.diagnostics.values["model_version"] = str(policy.model_version)
        self.diagnostics.count("swaps")
        self.get_logger().info(f"hot swap: model {old} -> {policy.model_version} ({policy.backend_name})")
        return True
