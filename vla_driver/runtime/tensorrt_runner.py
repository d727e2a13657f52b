"""Running a TensorRT engine (``run(feeds) -> dict`` like an ONNX Runtime session), opening it only when the
engine cache says it is valid here, and comparing it numerically with the ONNX Runtime reference."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .engine_cache import CacheAction, CacheDecision, check_engine_dir, load_failure_decision
from .graph_spec import PROFILE_POINTS, GraphSpec, sample_feeds
from .tensorrt_env import cuda_torch, import_tensorrt, runtime_engine_key, tensorrt_available


class EngineLoadError(RuntimeError):
    """An engine file could not be deserialized or does not match its graph spec: fall back, never reuse."""


class TrtRunner:
    """One engine, one execution context, one CUDA stream; ``run({name: array}) -> {name: array}``.

    Device buffers are allocated once for the profile's max shapes and their addresses bound once; a call
    copies inputs into the front of those buffers, sets the actual input shapes and enqueues
    ``execute_async_v3``. Not thread-safe: one runner per thread.
    """

    def __init__(self, engine_path: str | Path, spec: GraphSpec, device: int = 0):
        trt = import_tensorrt()
        self._torch = torch = cuda_torch()
        self.path = Path(engine_path)
        self.spec = spec
        self._device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        try:
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError here
            raise EngineLoadError(f"{self.path.name}: {exc}") from exc
        if self.engine is None:
            raise EngineLoadError(f"TensorRT could not deserialize {self.path.name} "
                                  "(built by another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineLoadError(f"{self.path.name}: could not create an execution context (out of GPU memory?)")

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        if set(self.input_names) != set(spec.inputs) or set(self.output_names) != set(spec.outputs):
            raise EngineLoadError(f"{self.path.name}: engine tensors {self.input_names} -> {self.output_names} "
                                  f"do not match graph {spec.name!r} ({list(spec.inputs)} -> {list(spec.outputs)})")
        try:
            self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        except TypeError as exc:  # e.g. bfloat16 I/O, which numpy cannot hold
            raise EngineLoadError(f"{self.path.name}: an I/O tensor type has no numpy equivalent ({exc})") from exc
        self.shape_ranges = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0))
                             for n in self.input_names}
        for name in self.input_names:
            self.context.set_input_shape(name, self.shape_ranges[name][2])
        shapes = {n: tuple(self.shape_ranges[n][2]) for n in self.input_names}
        shapes |= {n: tuple(self.context.get_tensor_shape(n)) for n in self.output_names}
        if any(d < 0 for n in self.output_names for d in shapes[n]):
            raise EngineLoadError(f"{self.path.name}: data-dependent output shapes are not supported ({shapes})")
        self.buffers = {n: torch.empty(shapes[n], dtype=torch.from_numpy(np.empty(0, self.dtypes[n])).dtype,
                                       device=self._device) for n in names}
        for name, buffer in self.buffers.items():
            self.context.set_tensor_address(name, buffer.data_ptr())
        self.stream = torch.cuda.Stream(device=self._device)

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.shape_ranges[name]
        if len(shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(shape, lo, hi, strict=True)):
            raise ValueError(f"{self.spec.name}: input {name!r} shape {list(shape)} outside the engine's "
                             f"profile {list(lo)}..{list(hi)}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"{self.spec.name}: inputs missing {missing}")
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.input_names}
        for name, array in arrays.items():
            self._check_shape(name, array.shape)
        with torch.cuda.stream(self.stream):
            for name, array in arrays.items():
                target = self.buffers[name].view(-1)[: array.size].view(array.shape)
                target.copy_(torch.from_numpy(array), non_blocking=False)
                self.context.set_input_shape(name, array.shape)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.spec.name}: execute_async_v3 failed")
            results = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                count = int(np.prod(shape, dtype=np.int64))
                results[name] = self.buffers[name].view(-1)[:count].view(shape).to("cpu", non_blocking=False)
        self.stream.synchronize()
        return {name: tensor.numpy() for name, tensor in results.items()}


# (rtol, atol) an engine's outputs must meet against the fp32 ONNX Runtime reference on synthetic inputs.
# A numeric sanity check only: whether int8/fp8 still drive well is decided by the model-level verification.
TOLERANCES = {"fp32": (1e-3, 1e-4), "fp16": (2e-2, 2e-2), "int8": (1e-1, 1e-1), "fp8": (1e-1, 1e-1)}


def compare_runners(reference, candidate, spec: GraphSpec, precision: str = "fp32",
                    points: Iterable[str] = PROFILE_POINTS, seed: int = 0) -> list[dict]:
    """Run two backends (anything with ``run(feeds) -> dict``) on the same synthetic inputs at each profile
    point; one row per (point, output) with the max abs difference and whether it is within tolerance.
    Integer/bool outputs must agree exactly at fp32 and on >= 95% of elements otherwise."""
    rtol, atol = TOLERANCES[precision]
    rows = []
    for point in points:
        feeds = sample_feeds(spec, point, seed)
        want, got = reference.run(feeds), candidate.run(feeds)
        for name, ref in want.items():
            out = np.asarray(got.get(name))
            if out.shape != ref.shape:
                rows.append({"point": point, "output": name, "ok": False,
                             "error": f"shape {list(out.shape)} != reference {list(ref.shape)}"})
                continue
            if ref.dtype.kind == "f":
                diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
                ok = bool(np.all(np.isfinite(out)) and np.allclose(out, ref, rtol=rtol, atol=atol))
                rows.append({"point": point, "output": name, "ok": ok, "max_abs_diff": float(diff.max(initial=0.0))})
            else:
                agree = float(np.mean(out == ref)) if ref.size else 1.0
                ok = agree == 1.0 if precision == "fp32" else agree >= 0.95
                rows.append({"point": point, "output": name, "ok": ok, "agreement": agree})
    return rows


def open_engine(engine_dir: str | Path, spec: GraphSpec, precision: str,
                allow_rebuild: bool = False) -> tuple[TrtRunner | None, CacheDecision]:
    """The runtime's entry point: a runner for ``spec``'s engine in ``engine_dir`` if (and only if) it is valid.

    Returns (runner, decision with action "use"), or (None, decision) whose action says rebuild or fall back
    to ONNX Runtime and whose reasons go to /diagnostics.
    """
    ok, why = tensorrt_available()
    if not ok:
        return None, CacheDecision(CacheAction.FALLBACK, Path(engine_dir), (f"tensorrt: {why}",))
    expected = runtime_engine_key(spec, precision)
    decision = check_engine_dir(engine_dir, expected, allow_rebuild)
    if not decision.usable:
        return None, decision
    try:
        return TrtRunner(decision.engine_path, spec), decision
    except EngineLoadError as exc:
        return None, load_failure_decision(decision.engine_path, exc, allow_rebuild)
