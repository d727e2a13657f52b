"""What one exported graph looks like: its tensors, its dynamic dims and the shape ranges engines are built for.

The exporter writes one ``GraphSpec`` per ONNX file (a list of them in ``graphs.json``); the ONNX Runtime and
TensorRT backends, the engine cache and the build/verify scripts all read it, so none of them needs to know
the model. Symbolic dims are strings (``"batch"``, ``"seq"``); an optimization profile gives each dynamic
input its (min, opt, max) shape.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

Shape = tuple[int, ...]
Dim = int | str
PROFILE_POINTS = ("min", "opt", "max")


@dataclass(frozen=True)
class TensorSpec:
    """dtype as a numpy name ("float32", "int64", "bool"); shape with symbolic dims as strings.

    ``value_range`` (inclusive) bounds the sample values used when backends are compared on synthetic inputs,
    e.g. ``(0, vocab_size - 1)`` for token ids; without it floats are drawn from [-1, 1] and integers are 1.
    """

    dtype: str
    shape: tuple[Dim, ...]
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "shape", tuple(d if isinstance(d, str) else int(d) for d in self.shape))
        if self.value_range is not None:
            object.__setattr__(self, "value_range", (float(self.value_range[0]), float(self.value_range[1])))

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(d, str) or d < 0 for d in self.shape)

    def to_dict(self) -> dict:
        out: dict = {"dtype": self.dtype, "shape": list(self.shape)}
        if self.value_range is not None:
            out["value_range"] = list(self.value_range)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> TensorSpec:
        vr = data.get("value_range")
        return cls(data["dtype"], tuple(data["shape"]), tuple(vr) if vr is not None else None)


def _shape_triplet(value: Sequence[Sequence[int]]) -> tuple[Shape, Shape, Shape]:
    if len(value) != 3:
        raise ValueError(f"a profile needs exactly (min, opt, max) shapes, got {len(value)}")
    lo, opt, hi = (tuple(int(d) for d in s) for s in value)
    return lo, opt, hi


TOKEN_EMBEDDINGS = "token_embeddings.npy"  # beside the graphs: what decoding feeds the step graph per new token


@dataclass
class GraphSpec:
    """One exported graph (e.g. "decision_scorer", "action_planner", "decoder_step").

    ``onnx_file`` is relative to the directory of the spec file (or absolute). ``checkpoint_sha256`` and
    ``adapter`` name the weights the graph was exported from; they go into every engine key built from it.
    ``exporter`` names the code that wrote the graph, so graphs from older exporter code are not reused.
    ``data_file`` names the file beside it that holds its weights (ONNX external data; one file that every
    graph of a checkpoint shares, each distinct tensor once); ``data_sha256`` verifies it as the graph is.
    ``side_files``: other files beside it that its runtime reads (name -> sha256), verified the same way.
    """

    name: str
    onnx_file: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    profiles: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    onnx_sha256: str = ""
    checkpoint_sha256: str = ""
    adapter: str = ""
    exporter: str = ""
    data_file: str = ""
    data_sha256: str = ""
    side_files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.profiles = {k: _shape_triplet(v) for k, v in self.profiles.items()}

    # ---- shapes -------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Everything that would make an engine build or a runtime call fail later, in words."""
        out: list[str] = []
        for name in self.profiles:
            if name not in self.inputs:
                out.append(f"profile for unknown input {name!r}")
        symbols: dict[str, tuple[int, int, int]] = {}
        for name, tensor in self.inputs.items():
            if name not in self.profiles:
                if tensor.is_dynamic:
                    out.append(f"input {name!r} has dynamic shape {list(tensor.shape)} but no profile")
                continue
            triplet = self.profiles[name]
            for point, shape in zip(PROFILE_POINTS, triplet, strict=True):
                if len(shape) != len(tensor.shape):
                    out.append(f"input {name!r}: {point} shape {list(shape)} has rank {len(shape)}, "
                               f"tensor rank is {len(tensor.shape)}")
            if any(len(s) != len(tensor.shape) for s in triplet):
                continue
            for axis, dim in enumerate(tensor.shape):
                lo, opt, hi = (s[axis] for s in triplet)
                if not 0 <= lo <= opt <= hi:
                    out.append(f"input {name!r} axis {axis}: need 0 <= min <= opt <= max, got {lo}, {opt}, {hi}")
                if isinstance(dim, str):
                    seen = symbols.setdefault(dim, (lo, opt, hi))
                    if seen != (lo, opt, hi):
                        out.append(f"dim {dim!r}: input {name!r} axis {axis} ranges {lo}/{opt}/{hi}, "
                                   f"another input has {seen[0]}/{seen[1]}/{seen[2]}")
                elif dim >= 0 and not lo == opt == hi == dim:
                    out.append(f"input {name!r} axis {axis} is static ({dim}) but its profile says {lo}/{opt}/{hi}")
        return out

    def validate(self) -> GraphSpec:
        problems = self.problems()
        if problems:
            raise ValueError(f"graph spec {self.name!r} is inconsistent:\n  " + "\n  ".join(problems))
        return self

    def input_shapes(self, point: str = "opt") -> dict[str, Shape]:
        """Concrete shape of every input at one profile point ("min", "opt" or "max")."""
        index = PROFILE_POINTS.index(point)
        shapes: dict[str, Shape] = {}
        for name, tensor in self.inputs.items():
            if name in self.profiles:
                shapes[name] = self.profiles[name][index]
            elif tensor.is_dynamic:
                raise ValueError(f"graph {self.name!r}: input {name!r} is dynamic and has no profile")
            else:
                shapes[name] = tuple(int(d) for d in tensor.shape)
        return shapes

    def profile_table(self) -> dict[str, tuple[Shape, Shape, Shape]]:
        """(min, opt, max) for every input, static inputs included: what an engine is specialised for."""
        mins, opts, maxs = (self.input_shapes(p) for p in PROFILE_POINTS)
        return {name: (mins[name], opts[name], maxs[name]) for name in self.inputs}

    def onnx_path(self, base_dir: str | Path = ".") -> Path:
        path = Path(self.onnx_file)
        return path if path.is_absolute() else Path(base_dir) / path

    def data_path(self, base_dir: str | Path = ".") -> Path | None:
        """The external weights file, or None for a graph that holds its weights."""
        return self.data_beside(self.onnx_path(base_dir))

    def data_beside(self, onnx_path: str | Path) -> Path | None:
        """The weights file of this graph read from ``onnx_path`` (it lies beside the graph), or None."""
        return Path(onnx_path).with_name(self.data_file) if self.data_file else None

    def beside_files(self, base_dir: str | Path = ".") -> list[tuple[Path, str]]:
        """(path, sha256) of every hashed file beside the graph that its runtime reads: weights, side files."""
        files = [(self.data_path(base_dir), self.data_sha256),
                 *((Path(base_dir) / name, digest) for name, digest in self.side_files.items())]
        return [(path, digest) for path, digest in files if path is not None and digest]

    # ---- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            "checkpoint_sha256": self.checkpoint_sha256,
            "adapter": self.adapter,
            "exporter": self.exporter,
            **({"data_file": self.data_file, "data_sha256": self.data_sha256} if self.data_file else {}),
            **({"side_files": dict(self.side_files)} if self.side_files else {}),
            "inputs": {k: v.to_dict() for k, v in self.inputs.items()},
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "profiles": {k: [list(s) for s in v] for k, v in self.profiles.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> GraphSpec:
        try:
            return cls(
                name=str(data["name"]),
                onnx_file=str(data["onnx_file"]),
                inputs={k: TensorSpec.from_dict(v) for k, v in data["inputs"].items()},
                outputs={k: TensorSpec.from_dict(v) for k, v in data["outputs"].items()},
                profiles=dict(data.get("profiles", {})),
                onnx_sha256=str(data.get("onnx_sha256", "")),
                checkpoint_sha256=str(data.get("checkpoint_sha256", "")),
                adapter=str(data.get("adapter", "")),
                exporter=str(data.get("exporter", "")),
                data_file=str(data.get("data_file", "")),
                data_sha256=str(data.get("data_sha256", "")),
                side_files={str(k): str(v) for k, v in data.get("side_files", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a valid graph spec ({type(exc).__name__}: {exc})") from exc

    def save(self, path: str | Path) -> Path:
        return save_graph_specs([self], path)


def save_graph_specs(specs: Sequence[GraphSpec], path: str | Path) -> Path:
    """Write ``{"graphs": [...]}`` (the file the build/verify scripts take as ``--spec``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"graphs": [s.to_dict() for s in specs]}, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_graph_specs(path: str | Path) -> list[GraphSpec]:
    """Read a spec file holding one spec, a list of them, or ``{"graphs": [...]}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"graph spec file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"graph spec file {path} is not valid JSON: {exc}") from exc
    if isinstance(data, Mapping) and "graphs" in data:
        data = data["graphs"]
    items = data if isinstance(data, list) else [data]
    try:
        return [GraphSpec.from_dict(item) for item in items]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _onnx_dim(dim, input_name: str, axis: int) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or f"{input_name}_dim{axis}"


def graph_spec_from_onnx(onnx_path: str | Path, name: str,
                         profiles: Mapping[str, Sequence[Sequence[int]]] | None = None,
                         **fields) -> GraphSpec:
    """Read inputs/outputs (names, dtypes, symbolic dims) from an ONNX file; fill in its sha256.

    ``fields`` passes checkpoint_sha256 / adapter through. ``onnx_file`` is stored as the file name, so the
    spec file is expected to sit beside the ONNX file.
    """
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}

    def tensors(values) -> dict[str, TensorSpec]:
        out = {}
        for v in values:
            if v.name in initializers:
                continue
            tt = v.type.tensor_type
            shape = tuple(_onnx_dim(d, v.name, i) for i, d in enumerate(tt.shape.dim))
            out[v.name] = TensorSpec(np.dtype(tensor_dtype_to_np_dtype(tt.elem_type)).name, shape)
        return out

    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    return GraphSpec(name=name, onnx_file=onnx_path.name, inputs=tensors(model.graph.input),
                     outputs=tensors(model.graph.output), profiles=dict(profiles or {}), onnx_sha256=digest,
                     **fields)


def sample_feeds(spec: GraphSpec, point: str = "opt", seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic inputs at one profile point, for comparing two backends on the same numbers."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in spec.input_shapes(point).items():
        tensor = spec.inputs[name]
        dtype = np.dtype(tensor.dtype)
        if dtype.kind == "f":
            lo, hi = tensor.value_range or (-1.0, 1.0)
            feeds[name] = rng.uniform(lo, hi, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = np.ones(shape, dtype=dtype)
        else:
            lo, hi = tensor.value_range or (1, 1)
            feeds[name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
    return feeds
