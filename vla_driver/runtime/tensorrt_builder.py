"""Turning an exported ONNX graph into a TensorRT engine for this GPU: parser, optimization profile, precision
(with INT8 calibration), timing cache and progress bars; the engine is written with its cache manifest."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .engine_cache import PRECISIONS, engine_filename, file_sha256, verify_file_hash, write_manifest
from .graph_spec import GraphSpec
from .onnx_ops import has_qdq
from .tensorrt_env import cuda_torch, import_tensorrt, runtime_engine_key


class EngineBuildError(RuntimeError):
    """The ONNX graph could not be turned into an engine (parser errors, precision not supported, ...)."""


def make_progress_monitor(base: type):
    """A ``base`` (``trt.IProgressMonitor``) subclass drawing one tqdm bar per running build phase."""
    class TqdmProgressMonitor(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._bars: dict[str, tqdm] = {}
            self._lock = threading.Lock()  # TensorRT may report from several threads

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                depth = len(self._bars)
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=depth == 0,
                                              unit="step", dynamic_ncols=True)

        def step_complete(self, phase_name, step):
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmProgressMonitor()


def EntropyCalibrator(batches: Iterable[Mapping[str, np.ndarray]], cache_file: str | Path, device: int = 0):
    """INT8 entropy calibrator (``trt.IInt8EntropyCalibrator2``) over ``batches`` of {input name: array}.

    Batches must have the calibration profile's opt shapes (see ``calibration.calibration_batches``). The
    scale table is written to ``cache_file`` and read back on later builds, which then skip the data.
    """
    trt = import_tensorrt()
    torch = cuda_torch()

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache_file = Path(cache_file)
            self.batches_used = 0
            self._batches = iter(batches)
            self._on_device: dict[str, object] = {}  # keeps the current batch alive while TensorRT reads it

        def get_batch_size(self):
            return 1  # explicit-batch networks: the batch dimension is part of each input's shape

        def get_batch(self, names):
            batch = next(self._batches, None)
            if batch is None or any(n not in batch for n in names):
                return None  # ends calibration (a batch without every input cannot be used)
            self._on_device = {n: torch.from_numpy(np.ascontiguousarray(batch[n])).to(f"cuda:{device}")
                               for n in names}
            torch.cuda.synchronize(device)
            self.batches_used += 1
            return [int(self._on_device[n].data_ptr()) for n in names]

        def read_calibration_cache(self):
            return self.cache_file.read_bytes() if self.cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            self.cache_file.write_bytes(bytes(memoryview(cache)))

    return _EntropyCalibrator()


def _has_fast(builder, attribute: str, cc: str, min_cc: float) -> bool:
    """``builder.platform_has_fast_*`` where it still exists (deprecated in TensorRT 10), else by compute capability."""
    value = getattr(builder, attribute, None)
    return bool(value) if value is not None else float(cc) >= min_cc


def _set_precision(trt, builder, config, profile, precision: str, cc: str, calibrator, onnx_path: Path) -> None:
    if precision == "fp32":
        return
    if precision == "fp16":
        if not _has_fast(builder, "platform_has_fast_fp16", cc, 5.3):
            raise EngineBuildError(f"GPU sm_{cc} has no fast FP16; build fp32 instead")
        config.set_flag(trt.BuilderFlag.FP16)
        return
    if precision == "int8":
        if not _has_fast(builder, "platform_has_fast_int8", cc, 6.1):
            raise EngineBuildError(f"GPU sm_{cc} has no fast INT8; build fp16 or fp32 instead")
        config.set_flag(trt.BuilderFlag.INT8)
        if _has_fast(builder, "platform_has_fast_fp16", cc, 5.3):
            config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot take run in FP16 rather than FP32
        if not has_qdq(onnx_path):
            if calibrator is None:
                raise EngineBuildError("int8 without Q/DQ nodes in the graph needs a calibrator "
                                       "(--calib-frames DIR) or an existing calibration cache")
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        return
    if precision == "fp8":
        if float(cc) < 8.9:
            raise EngineBuildError(f"FP8 needs compute capability >= 8.9 (Ada/Hopper); this GPU is sm_{cc}")
        if not has_qdq(onnx_path):
            raise EngineBuildError("FP8 needs an explicitly quantized graph (QuantizeLinear/DequantizeLinear "
                                   f"nodes, e.g. from NVIDIA ModelOpt); {onnx_path.name} has none")
        config.set_flag(trt.BuilderFlag.FP8)
        config.set_flag(trt.BuilderFlag.FP16)
        return
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _optimization_profile(builder, network, spec: GraphSpec):
    table = spec.profile_table()
    network_inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = {t.name for t in network_inputs}
    if names != set(spec.inputs):
        raise EngineBuildError(f"graph {spec.name!r}: ONNX inputs {sorted(names)} != spec inputs {sorted(spec.inputs)}")
    profile = builder.create_optimization_profile()
    for tensor in network_inputs:
        if tensor.is_shape_tensor:
            raise EngineBuildError(f"input {tensor.name!r} is a shape tensor; only execution tensors are supported")
        lo, opt, hi = table[tensor.name]
        if len(tensor.shape) != len(lo):
            raise EngineBuildError(f"input {tensor.name!r}: ONNX rank {len(tensor.shape)} != spec rank {len(lo)}")
        profile.set_shape(tensor.name, lo, opt, hi)
    return profile


def _write_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(memoryview(data))
    tmp.replace(path)


def build_engine(onnx_path: str | Path, out_path: str | Path, spec: GraphSpec, precision: str,
                 calibrator=None, timing_cache_path: str | Path | None = None, workspace_gb: float = 4.0,
                 progress: bool = True, *, checkpoint_sha256: str | None = None,
                 adapter: str | None = None) -> Path:
    """Build ``spec``'s ONNX graph into an engine for this GPU; write it and its manifest; return its path.

    ``out_path`` is a directory (existing, or a path without suffix; the file is then named by
    ``engine_filename``) or a file path. The key's
    source hash and adapter come from the spec unless given (see ``EngineKey.for_graph``). The timing cache
    at ``timing_cache_path`` is loaded if present and saved after the build.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    spec.validate()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    if spec.onnx_sha256:
        verify_file_hash(onnx_path, spec.onnx_sha256)
    if spec.data_file and spec.data_sha256:  # parse_from_file reads the weights file beside the graph
        verify_file_hash(spec.data_beside(onnx_path), spec.data_sha256)
    trt = import_tensorrt()
    key = runtime_engine_key(spec, precision, checkpoint_sha256, adapter)
    if not key.checkpoint_sha256:
        raise EngineBuildError(f"graph {spec.name!r}: the engine key needs a source hash; set checkpoint_sha256 "
                               "or onnx_sha256 in the spec, or pass checkpoint_sha256")
    out_path = Path(out_path)
    engine_path = out_path / engine_filename(key) if out_path.is_dir() or not out_path.suffix else out_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = _optimization_profile(builder, network, spec)
    config.add_optimization_profile(profile)
    _set_precision(trt, builder, config, profile, precision, key.compute_capability, calibrator, onnx_path)

    timing_cache_path = Path(timing_cache_path) if timing_cache_path else None
    cached = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(cached)
    config.set_timing_cache(timing_cache, False)  # False: refuse a cache from another device/version
    monitor = make_progress_monitor(trt.IProgressMonitor) if progress and hasattr(trt, "IProgressMonitor") else None
    if monitor is not None:
        config.progress_monitor = monitor  # keep `monitor` referenced until the build returns

    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - started
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build {spec.name!r} at {precision} (see its log above)")
    _write_atomic(engine_path, serialized)
    if timing_cache_path is not None:
        _write_atomic(timing_cache_path, config.get_timing_cache().serialize())
    write_manifest(engine_path, key, extra={
        "onnx_file": onnx_path.name, "onnx_sha256": file_sha256(onnx_path), "build_seconds": round(seconds, 1),
        "workspace_gb": workspace_gb, "timing_cache": str(timing_cache_path or ""),
        "calibration_batches": getattr(calibrator, "batches_used", None),
    })
    return engine_path
