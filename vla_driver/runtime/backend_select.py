"""Which inference backend serves the model: TensorRT engines, ONNX Runtime, or PyTorch.

``auto`` takes the fastest one that can run right now. An explicit request that cannot be met does not stop
the car's software: it falls back along the same order and says so in a WARN that the nodes publish on
/diagnostics. If nothing can run, the choice is "none" at ERROR level and the caller keeps its safe fallback.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tensorrt_env import tensorrt_available

BACKENDS = ("tensorrt", "onnxruntime", "torch")
REQUESTS = ("auto", *BACKENDS)


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "tensorrt" | "onnxruntime" | "torch" | "none"
    reason: str
    warnings: tuple[str, ...] = ()
    requested: str = "auto"

    @property
    def level(self) -> str:
        if self.name == "none":
            return "ERROR"
        return "WARN" if self.warnings else "OK"

    def diagnostics(self) -> dict[str, str]:
        """Key/values for a diagnostic_msgs/DiagnosticStatus."""
        return {"backend": self.name, "requested": self.requested, "level": self.level, "reason": self.reason,
                "warnings": " | ".join(self.warnings)}


def resolve_backend(requested: str, engines_ok: bool, ort_ok: bool, *,
                    trt_available: bool | tuple[bool, str] | None = None, torch_ok: bool = True,
                    details: str = "") -> BackendChoice:
    """Pick a backend.

    ``engines_ok``: every engine passed the cache check (and loaded); ``ort_ok``: the ONNX graphs load in ONNX
    Runtime; ``trt_available``: TensorRT usable here, as a bool or ``tensorrt_available()``'s (ok, reason),
    asked for when None; ``details``: why engines are not ok (e.g. a CacheDecision summary), quoted in reasons.
    """
    if trt_available is None:
        trt_available = tensorrt_available()
    trt_ok, trt_reason = trt_available if isinstance(trt_available, tuple) else (trt_available, "")
    usable = {"tensorrt": bool(trt_ok and engines_ok), "onnxruntime": bool(ort_ok), "torch": bool(torch_ok)}
    why_not = {
        "tensorrt": (f"TensorRT unavailable ({trt_reason or 'not usable here'})" if not trt_ok
                     else f"engines not valid ({details or 'cache check failed'})"),
        "onnxruntime": "ONNX Runtime cannot load the graphs",
        "torch": "torch backend unavailable",
    }
    warnings: list[str] = []
    if requested not in REQUESTS:
        warnings.append(f"unknown backend {requested!r} (expected one of {', '.join(REQUESTS)}); using auto")
        requested_name = "auto"
    else:
        requested_name = requested

    if requested_name != "auto":
        if usable[requested_name]:
            return BackendChoice(requested_name, f"{requested_name} as requested", tuple(warnings), requested)
        order = [b for b in BACKENDS if b != requested_name]
        failure = f"requested {requested_name} but {why_not[requested_name]}"
        for name in order:
            if usable[name]:
                warnings.append(f"{failure}; falling back to {name}")
                return BackendChoice(name, f"fallback to {name}: {failure}", tuple(warnings), requested)
        warnings.append(f"{failure}; no other backend can run")
        return BackendChoice("none", "no inference backend available: " + "; ".join(why_not.values()),
                             tuple(warnings), requested)

    skipped: list[str] = []
    for name in BACKENDS:
        if usable[name]:
            if name == "torch":
                warnings.append("auto: running the slow torch backend (" + "; ".join(skipped) + ")")
            elif name == "onnxruntime" and trt_ok:
                warnings.append(f"auto: TensorRT is available but {why_not['tensorrt']}; using onnxruntime")
            reason = f"auto: {name}" + (f" ({'; '.join(skipped)})" if skipped else "")
            return BackendChoice(name, reason, tuple(warnings), requested)
        skipped.append(f"{name}: {why_not[name]}")
    return BackendChoice("none", "no inference backend available: " + "; ".join(skipped), tuple(warnings),
                         requested)
