"""ONNX Runtime session for any exported graph: hash-checked load, provider choice, dict in / dict out.

It is the fallback whenever a TensorRT engine cannot be used, and the reference TensorRT engines are checked
against, so it refuses to load an ONNX file whose sha256 differs from the one recorded at export.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .engine_cache import verify_file_hash
from .graph_spec import GraphSpec

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

# ONNX type strings as ORT reports them -> numpy dtypes, so callers may pass e.g. Python lists or float64.
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def ort_available() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return False, f"onnxruntime is not installed ({exc})"
    return True, f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"


def select_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """``"auto"``: the fastest available of TensorRT EP > CUDA EP > CPU; ``"cpu"``/``"cuda"``/``"tensorrt"`` or
    a list of provider names: those that are available, in order, with CPU always last as the safety net."""
    if isinstance(requested, str):
        wanted = list(AUTO_ORDER) if requested == "auto" else [PROVIDER_ALIASES.get(requested, requested)]
    else:
        wanted = [PROVIDER_ALIASES.get(p, p) for p in requested]
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OrtSession:
    """One ONNX graph in ONNX Runtime. ``run({name: array}) -> {name: array}``; no model knowledge.

    ``trt_cache_dir`` enables ONNX Runtime's own TensorRT engine cache when the TensorRT EP is chosen (without
    it that EP rebuilds its engines at every start).
    """

    def __init__(self, onnx_path: str | Path, expected_sha256: str | None = None, threads: int = 2,
                 providers: str | Sequence[str] = "auto", trt_cache_dir: str | Path | None = None,
                 data_file: str | Path | None = None, data_sha256: str | None = None):
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        if expected_sha256:
            verify_file_hash(self.path, expected_sha256)
        if data_file and data_sha256:
            verify_file_hash(data_file, data_sha256)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError(f"cannot load {self.path}: onnxruntime is not installed ({exc})") from exc

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        # Several nodes share the CPU in one process or machine: spinning worker threads would steal it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chosen = select_providers(providers, ort.get_available_providers())
        provider_args: list = []
        for name in chosen:
            if name == "TensorrtExecutionProvider" and trt_cache_dir is not None:
                Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
                provider_args.append((name, {"trt_engine_cache_enable": True,
                                             "trt_engine_cache_path": str(trt_cache_dir)}))
            else:
                provider_args.append(name)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=provider_args)
        except Exception as exc:  # ORT raises its own exception types; name the file in the message
            raise RuntimeError(f"onnxruntime could not load {self.path}: {exc}") from exc
        self.providers: list[str] = self.session.get_providers()
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in feeds]
        unknown = [n for n in feeds if n not in self._inputs]
        if missing or unknown:
            raise KeyError(f"{self.path.name}: inputs missing {missing}, unknown {unknown}; "
                           f"the graph takes {self.input_names}")
        prepared = {}
        for name, value in feeds.items():
            dtype = _ORT_TYPES.get(self._inputs[name].type)
            prepared[name] = np.ascontiguousarray(value, dtype=dtype)
        names = list(outputs) if outputs is not None else self.output_names
        values = self.session.run(names, prepared)
        return dict(zip(names, values, strict=True))


THINKING_GRAPHS = ("prompt_embedder", "decoder_step")


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class OrtSessions(Mapping):
    """The ONNX Runtime sessions of one export, by graph name. Every file is verified by hash at once (the
    shared weights file once). The graphs only slow thinking uses open on first use: each session keeps its
    own packed copy of its MatMul weights (ORT's prepacking, worth 2x in latency here), so a graph never run
    costs no memory. The weights file's offsets are page-aligned, so ORT maps the tensors it does not pack
    (the embeddings) instead of reading them, shared by every session and process."""

    def __init__(self, specs: Mapping[str, GraphSpec], graph_dir: str | Path, threads: int = 2,
                 providers: str | Sequence[str] = "auto", lazy: Sequence[str] = THINKING_GRAPHS):
        self.specs, self.dir, self.threads, self.providers = dict(specs), Path(graph_dir), threads, providers
        self.verified: dict[Path, tuple[int, int]] = {}  # weights file -> (size, mtime) when it was hashed
        for spec in self.specs.values():
            if spec.onnx_sha256:
                verify_file_hash(spec.onnx_path(self.dir), spec.onnx_sha256)
            for path, digest in spec.beside_files(self.dir):
                if path not in self.verified:
                    verify_file_hash(path, digest)
                    self.verified[path] = _identity(path)
        self.open = {name: self._session(name) for name in self.specs if name not in lazy}

    def _session(self, name: str) -> OrtSession:
        return OrtSession(self.specs[name].onnx_path(self.dir), None, self.threads, self.providers)

    def __getitem__(self, name: str) -> OrtSession:
        if name not in self.open:
            self.open[name] = self._open_later(name)
        return self.open[name]

    def side_file(self, name: str) -> Path:
        """A side file verified at load (e.g. the token embeddings), refused if it changed since."""
        path = self.dir / name
        if path not in self.verified:
            raise RuntimeError(f"{path} is not a verified side file of these graphs")
        self._check_unchanged(path)
        return path

    def _check_unchanged(self, path: Path) -> None:
        if _identity(path) != self.verified[path]:
            raise RuntimeError(f"{path} changed since it was verified at load")

    def _open_later(self, name: str) -> OrtSession:
        """A graph opened after load: its (small) file is hashed again, and the weights file must be the one
        hashed at load (hashing gigabytes here would stall the cycle that first thinks)."""
        spec = self.specs[name]
        try:
            if spec.onnx_sha256:
                verify_file_hash(spec.onnx_path(self.dir), spec.onnx_sha256)
            data = spec.data_path(self.dir)
            if data is not None and data in self.verified:
                self._check_unchanged(data)
            return self._session(name)
        except (OSError, ValueError, RuntimeError) as err:
            raise RuntimeError(f"cannot open the {name} graph: {err}") from None

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)
