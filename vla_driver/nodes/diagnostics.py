"""Per-node health on /diagnostics: loop rate, latency, backend, counters, input ages, level + message.

Published once a second on a steady clock (so it keeps coming while sim time is paused) and at once
whenever the level changes, so a fault is visible without waiting for the next period.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", DiagnosticStatus.STALE: "STALE"}


class NodeDiagnostics:
    def __init__(self, node, backend: str = "", window: int = 200, period_s: float = 1.0):
        self._node = node
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._lock = threading.RLock()  # reject() publishes while holding it
        self._cycle_times = deque(maxlen=window)  # node-clock seconds, so rates are in sim time in sim
        self._latencies_ms = deque(maxlen=window)
        self.backend = backend
        self.backend_shortfall = ""  # why the backend serving the model is not the one asked for
        self.counters = Counter()
        self.input_ages: dict[str, float] = {}
        self.values: dict[str, str] = {}
        self.level, self.message = OK, "starting"
        self._timer = node.create_timer(period_s, self.publish, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def set_backend(self, policy) -> None:
        """The backend serving ``policy``. One that fell short of the request (a graph failed its hash, engines
        their cache rules) is named in every status, and keeps an OK one at WARN: the car drives, slower."""
        choice = getattr(policy, "backend_choice", None)
        with self._lock:
            self.backend = policy.backend_name
            self.backend_shortfall = " | ".join(choice.warnings) if choice is not None else ""

    def cycle_done(self, latency_ms: float | None = None) -> None:
        """Record one completed loop iteration (for the measured rate) and its compute latency."""
        with self._lock:
            self._cycle_times.append(self._node.get_clock().now().nanoseconds * 1e-9)
            if latency_ms is not None:
                self._latencies_ms.append(float(latency_ms))

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def input_age(self, name: str, age_s: float | None) -> None:
        with self._lock:
            self.input_ages[name] = float("inf") if age_s is None else float(age_s)

    def set_status(self, level: bytes, message: str) -> None:
        """Set the current level and message; a level change is published immediately. An OK status names no
        earlier rejection (the counters keep them)."""
        with self._lock:
            changed = level != self.level
            self.level, self.message = level, message
            if level == OK:
                self.values.pop("last_rejected", None)
        if changed:
            self.publish()

    def reject(self, source: str, error: Exception) -> None:
        """A refused input message: counted, logged (throttled) and published as WARN unless already ERROR."""
        reason = getattr(error, "reason", type(error).__name__)
        self._node.get_logger().warn(f"rejected {source} message: {error}", throttle_duration_sec=1.0)
        with self._lock:  # one status per rejection, showing it: rejections on other threads wait
            self.counters[f"rejected_{source}"] += 1
            self.values["last_rejected"] = f"{source}: {error}"
            if self.level != ERROR:
                self.level, self.message = WARN, f"rejected {source} message ({reason})"
            self.publish()  # every rejection is shown at once, even when the level does not change

    def guard(self, source: str, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """Wrap a subscription callback so a bad message is rejected with a diagnostic, never raised.

        Any exception counts: an executor callback that raises would stop the whole node.
        """

        def callback(msg) -> None:
            try:
                handler(msg)
            except Exception as e:  # noqa: BLE001 - see docstring
                self.reject(source, e)

        return callback

    def stats(self) -> dict:
        """Measured figures: rate_hz, latency_p50_ms, latency_p99_ms (None until measured)."""
        with self._lock:
            times, lat = list(self._cycle_times), list(self._latencies_ms)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return {
            "rate_hz": (len(times) - 1) / span if span > 0 else None,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if lat else None,
        }

    def status(self) -> DiagnosticStatus:
        values = {f"{k}": "n/a" if v is None else f"{v:.3f}" for k, v in self.stats().items()}
        with self._lock:
            values["backend"] = self.backend
            if self.backend_shortfall:
                values["backend_warnings"] = self.backend_shortfall
            values.update({k: str(v) for k, v in sorted(self.counters.items())})
            values.update({f"age_{k}_s": f"{v:.3f}" for k, v in sorted(self.input_ages.items())})
            values.update(self.values)
            level, message = self.level, self.message
            if level == OK and self.backend_shortfall:
                level, message = WARN, f"{message}; backend {self.backend}: {self.backend_shortfall}"
        return DiagnosticStatus(
            level=level, name=f"vla_driver: {self._node.get_name()}", message=message,
            hardware_id="vla_driver", values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def publish(self) -> None:
        msg = DiagnosticArray(status=[self.status()])
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(msg)
