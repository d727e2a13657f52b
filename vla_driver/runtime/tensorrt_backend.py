"""TensorRT 10 engines for any exported graph: build (ONNX parser, profiles, precision, timing cache, progress),
load and run, INT8 calibration, and an ONNX operator pre-check.

``tensorrt`` is imported only inside the functions that need it, so this module imports (and its pure parts
are tested) on machines without TensorRT or a GPU; anything that needs TensorRT raises
``TensorRTUnavailable`` with the reason. Device buffers are torch CUDA tensors: torch is already on the car
for the torch backend and owns the CUDA context there, so no second CUDA binding (cuda-python, pycuda) is
needed and buffers are freed by ordinary reference counting.
"""
from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .engine_cache import (
    PRECISIONS,
    CacheAction,
    CacheDecision,
    EngineKey,
    check_engine_dir,
    engine_filename,
    file_sha256,
    load_failure_decision,
    verify_file_hash,
    write_manifest,
)
from .graph_spec import PROFILE_POINTS, GraphSpec, sample_feeds


class TensorRTUnavailable(RuntimeError):
    """TensorRT, a CUDA GPU or torch with CUDA is missing here."""


class EngineBuildError(RuntimeError):
    """The ONNX graph could not be turned into an engine (parser errors, precision not supported, ...)."""


class EngineLoadError(RuntimeError):
    """An engine file could not be deserialized or does not match its graph spec: fall back, never reuse."""


# ---- ONNX operators TensorRT's parser takes ----------------------------------------------------------
# Our own list, made from the operator support matrix of onnx-tensorrt (docs/operators.md, TensorRT 10.x).
# Restrictions per operator (e.g. "axes must be an initializer") are not checked here; the parser reports them.
TRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BlackmanWindow Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Opset 23/24 operators that only the newest TensorRT 10 parsers take (10.15 added RMSNormalization,
# RotaryEmbedding and TensorScatter); the car's TensorRT may be older, so they count as unsupported by default.
TRT_ONNX_RECENT_OPS = frozenset({"Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter"})
_DEFAULT_DOMAINS = ("", "ai.onnx")
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _load_onnx(model):
    if isinstance(model, str | Path):
        import onnx

        return onnx.load(str(model), load_external_data=False)
    return model


def _graph_op_types(graph, functions: Mapping) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, looking inside subgraphs (If/Loop/Scan) and model-local functions."""
    found: set[tuple[str, str]] = set()
    for node in graph.node:
        key = (node.domain, node.op_type)
        if key in functions:
            found |= _graph_op_types(functions[key], {k: v for k, v in functions.items() if k != key})
        else:
            found.add(("" if node.domain in _DEFAULT_DOMAINS else node.domain, node.op_type))
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found |= _graph_op_types(sub, functions)
    return found


def onnx_op_types(model) -> set[tuple[str, str]]:
    model = _load_onnx(model)
    functions = {(f.domain, f.name): f for f in model.functions}
    return _graph_op_types(model.graph, functions)


def unsupported_ops(model, allow_recent: bool = False) -> list[str]:
    """Operators of ``model`` (ModelProto or path) that TensorRT's ONNX parser does not take, sorted.

    Non-default domains come back as ``"domain::Op"`` (they would need a TensorRT plugin).
    ``allow_recent`` accepts the opset-23/24 operators of the newest TensorRT 10 releases.
    """
    supported = TRT_ONNX_OPS | (TRT_ONNX_RECENT_OPS if allow_recent else frozenset())
    bad = {op if not domain else f"{domain}::{op}" for domain, op in onnx_op_types(model)
           if domain or op not in supported}
    return sorted(bad)


# ---- environment -------------------------------------------------------------------------------------
def _import_trt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise TensorRTUnavailable(
            f"TensorRT Python bindings are not importable ({exc}). On the car they come with JetPack (Jetson) "
            "or `pip install tensorrt` with NVIDIA's package index (x86 + CUDA); elsewhere use the "
            "onnxruntime backend.") from exc
    return trt


def _cuda_torch():
    try:
        import torch
    except ImportError as exc:
        raise TensorRTUnavailable(f"torch is needed for CUDA buffers ({exc})") from exc
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"torch {torch.__version__} sees no CUDA GPU (CPU-only build or no device)")
    return torch


def gpu_compute_capability(device: int = 0) -> str | None:
    """"8.7" (Orin), "8.9" (Ada), "9.0" (Hopper)...; None when no CUDA GPU is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return f"{major}.{minor}"
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader", f"--id={device}"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text.splitlines()[0].strip() if out.returncode == 0 and text else None


def tensorrt_available() -> tuple[bool, str]:
    """(True, "TensorRT 10.3.0 on sm_8.7") or (False, why not): bindings, GPU and torch CUDA all needed."""
    try:
        trt = _import_trt()
        _cuda_torch()
    except TensorRTUnavailable as exc:
        return False, str(exc)
    cc = gpu_compute_capability()
    if cc is None:
        return False, f"TensorRT {trt.__version__} imported but no CUDA GPU is visible"
    return True, f"TensorRT {trt.__version__} on sm_{cc}"


def runtime_engine_key(spec: GraphSpec, precision: str, checkpoint_sha256: str | None = None,
                       adapter: str | None = None) -> EngineKey:
    """The key an engine for ``spec`` must have to run here (this GPU, this TensorRT)."""
    trt = _import_trt()
    cc = gpu_compute_capability()
    if cc is None:
        raise TensorRTUnavailable("no CUDA GPU visible: engines are specific to the GPU they run on")
    return EngineKey.for_graph(spec, precision, cc, trt.__version__, checkpoint_sha256, adapter)


# ---- build -------------------------------------------------------------------------------------------
def make_progress_monitor(base: type):
    """A ``base`` (``trt.IProgressMonitor``) subclass drawing one tqdm bar per running build phase."""
    from tqdm import tqdm

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
    trt = _import_trt()
    torch = _cuda_torch()

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


def _graph_has_qdq(onnx_path: Path) -> bool:
    return any(op in _QDQ_OPS for _, op in onnx_op_types(onnx_path))


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
        if not _graph_has_qdq(onnx_path):
            if calibrator is None:
                raise EngineBuildError("int8 without Q/DQ nodes in the graph needs a calibrator "
                                       "(--calib-frames DIR) or an existing calibration cache")
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        return
    if precision == "fp8":
        if float(cc) < 8.9:
            raise EngineBuildError(f"FP8 needs compute capability >= 8.9 (Ada/Hopper); this GPU is sm_{cc}")
        if not _graph_has_qdq(onnx_path):
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
    trt = _import_trt()
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


# ---- run ---------------------------------------------------------------------------------------------
class TrtRunner:
    """One engine, one execution context, one CUDA stream; ``run({name: array}) -> {name: array}``.

    Device buffers are allocated once for the profile's max shapes and their addresses bound once; a call
    copies inputs into the front of those buffers, sets the actual input shapes and enqueues
    ``execute_async_v3``. Not thread-safe: one runner per thread.
    """

    def __init__(self, engine_path: str | Path, spec: GraphSpec, device: int = 0):
        trt = _import_trt()
        self._torch = torch = _cuda_torch()
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
