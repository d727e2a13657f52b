"""When a serialized TensorRT engine may be reused, and when it must be rebuilt or bypassed.

An engine is only valid for the exact weights, adapter, precision, GPU architecture, TensorRT version and
input shape ranges it was built for, and TensorRT itself does not check most of that. So every engine file
carries the full ``EngineKey`` in its name (as a hash) and in a JSON manifest beside it, together with its own
sha256. ``check_engine`` compares all of it with what the runtime expects and never lets a stale or corrupted
engine through: the answer is use, rebuild (only when allowed) or fall back to ONNX Runtime, with every
mismatch named field by field. Plain stdlib, so it runs (and is tested) where TensorRT is absent.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path

from ..core.hashing import sha256_file

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"

Profiles = tuple[tuple[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]], ...]


class HashMismatchError(ValueError):
    """A file's content is not the one that was recorded (corrupted, truncated or replaced)."""

    def __init__(self, path: Path, expected: str, actual: str):
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"{path}: sha256 {actual[:16]}.. does not match the expected {expected[:16]}.. "
                         "(file corrupted or replaced; re-export or re-copy it)")


file_sha256 = sha256_file


def verify_file_hash(path: str | Path, sha256: str) -> None:
    """Raise ``FileNotFoundError`` / ``HashMismatchError`` naming the file unless its sha256 matches."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected sha256 {sha256[:16]}..)")
    actual = file_sha256(path)
    if actual != sha256.lower():
        raise HashMismatchError(path, sha256.lower(), actual)


def _canonical_profiles(profiles: Mapping) -> Profiles:
    return tuple(sorted((str(name), tuple(tuple(int(d) for d in s) for s in triplet))
                        for name, triplet in profiles.items()))


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine is specialised for. Two engines with equal keys are interchangeable."""

    graph: str
    checkpoint_sha256: str
    adapter: str
    precision: str
    compute_capability: str
    trt_version: str
    profiles: Profiles

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        object.__setattr__(self, "profiles", _canonical_profiles(dict(self.profiles)))

    @classmethod
    def for_graph(cls, spec, precision: str, compute_capability: str, trt_version: str,
                  checkpoint_sha256: str | None = None, adapter: str | None = None) -> EngineKey:
        """Key of ``spec`` (a GraphSpec) built at ``precision`` on this GPU and TensorRT version.

        The source hash is ``checkpoint_sha256`` if given, else the spec's checkpoint hash, else its ONNX hash
        (a graph exported without a checkpoint is its own source); graphs whose weights were stored in another
        format than float32 (``exporter``) are another source.
        """
        source = checkpoint_sha256 or spec.checkpoint_sha256 or spec.onnx_sha256
        weights = getattr(spec, "exporter", "").partition("/weights-")[2]
        return cls(graph=spec.name, checkpoint_sha256=f"{source}+weights-{weights}" if weights else source,
                   adapter=adapter if adapter is not None else spec.adapter,
                   precision=precision, compute_capability=compute_capability, trt_version=trt_version,
                   profiles=spec.profile_table())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["profiles"] = {name: [list(s) for s in triplet] for name, triplet in self.profiles}
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> EngineKey:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name != "profiles"},
                   profiles=data["profiles"])

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "none"


def engine_filename(key: EngineKey) -> str:
    """Readable and stable: ``<graph>-<adapter>-<precision>-sm<cc>-trt<ver>-c<ckpt8>-<keyhash10>.engine``.

    The trailing hash covers the whole key (shape profiles included), so two different keys never share a name.
    """
    parts = [_slug(key.graph), _slug(key.adapter), key.precision, "sm" + _slug(key.compute_capability).replace(".", ""),
             "trt" + _slug(key.trt_version), "c" + (_slug(key.checkpoint_sha256)[:8]), key.digest()[:10]]
    return "-".join(parts) + ".engine"


def manifest_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + MANIFEST_SUFFIX)


def write_manifest(engine_path: str | Path, key: EngineKey, extra: Mapping | None = None) -> Path:
    """Record the key and the engine file's sha256 beside it (written atomically, after the engine)."""
    engine_path = Path(engine_path)
    manifest = {
        "format": MANIFEST_FORMAT,
        "engine_file": engine_path.name,
        "engine_sha256": file_sha256(engine_path),
        "engine_bytes": engine_path.stat().st_size,
        "key": key.to_dict(),
        "key_sha256": key.digest(),
        "created_unix": round(time.time(), 3),
        "build": dict(extra or {}),
    }
    path = manifest_path(engine_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(engine_path: str | Path) -> dict:
    path = manifest_path(engine_path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("manifest is not a JSON object")
    return data


class CacheAction(str, Enum):
    USE = "use"
    REBUILD = "rebuild"
    FALLBACK = "fallback_onnxruntime"


@dataclass(frozen=True)
class CacheDecision:
    action: CacheAction
    engine_path: Path
    reasons: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.action is CacheAction.USE

    def summary(self) -> str:
        head = f"{self.engine_path.name}: {self.action.value}"
        return head if not self.reasons else head + " (" + "; ".join(self.reasons) + ")"


def _short(value) -> str:
    text = str(value)
    return text[:12] + ".." if re.fullmatch(r"[0-9a-f]{40,}", text) else text


def _fmt_profile(triplet) -> str:
    return "/".join("x".join(str(d) for d in s) for s in triplet)


def key_mismatches(recorded: Mapping, expected: EngineKey) -> list[str]:
    """Field-by-field differences between a manifest's key and the expected one, e.g.
    ``"trt_version: engine 10.3.0 != runtime 10.7.0"``."""
    out: list[str] = []
    want = expected.to_dict()
    for name, value in want.items():
        if name not in recorded:
            out.append(f"{name}: missing in manifest")
        elif name == "profiles":
            got = recorded[name] if isinstance(recorded[name], Mapping) else {}
            for tensor in sorted(set(got) | set(value)):
                if tensor not in got:
                    out.append(f"profiles[{tensor}]: engine has no such input, runtime needs {_fmt_profile(value[tensor])}")
                elif tensor not in value:
                    out.append(f"profiles[{tensor}]: engine input {_fmt_profile(got[tensor])} unknown to runtime")
                elif [list(s) for s in got[tensor]] != value[tensor]:
                    out.append(f"profiles[{tensor}]: engine {_fmt_profile(got[tensor])} != runtime "
                               f"{_fmt_profile(value[tensor])}")
        elif str(recorded[name]) != str(value):
            out.append(f"{name}: engine {_short(recorded[name])} != runtime {_short(value)}")
    return out


def _not_usable(engine_path: Path, reasons: list[str], allow_rebuild: bool) -> CacheDecision:
    action = CacheAction.REBUILD if allow_rebuild else CacheAction.FALLBACK
    return CacheDecision(action, engine_path, tuple(reasons))


def check_engine(engine_path: str | Path, expected: EngineKey, allow_rebuild: bool = False) -> CacheDecision:
    """Decide whether ``engine_path`` may serve ``expected``: use it, rebuild it, or fall back to ONNX Runtime."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return _not_usable(engine_path, [f"engine: file missing ({engine_path})"], allow_rebuild)
    if not manifest_path(engine_path).is_file():
        return _not_usable(engine_path, [f"manifest: file missing ({manifest_path(engine_path).name})"],
                           allow_rebuild)
    try:
        manifest = read_manifest(engine_path)
    except (OSError, ValueError) as exc:
        return _not_usable(engine_path, [f"manifest: unreadable ({exc})"], allow_rebuild)
    reasons: list[str] = []
    if manifest.get("format") != MANIFEST_FORMAT:
        reasons.append(f"format: manifest {manifest.get('format')} != runtime {MANIFEST_FORMAT}")
    actual = file_sha256(engine_path)
    if manifest.get("engine_sha256") != actual:
        reasons.append(f"engine_sha256: file {_short(actual)} != manifest {_short(manifest.get('engine_sha256'))} "
                       "(corrupted or replaced)")
    recorded = manifest.get("key")
    if not isinstance(recorded, Mapping):
        reasons.append("key: missing in manifest")
    else:
        reasons.extend(key_mismatches(recorded, expected))
    if reasons:
        return _not_usable(engine_path, reasons, allow_rebuild)
    return CacheDecision(CacheAction.USE, engine_path)


def check_engine_dir(engine_dir: str | Path, expected: EngineKey, allow_rebuild: bool = False) -> CacheDecision:
    """``check_engine`` on the engine named for ``expected`` in ``engine_dir``.

    When that file does not exist (the name changes with any key field), the newest engine of the same graph
    is checked instead, so the decision names what changed (e.g. the TensorRT version) instead of only
    "missing". A renamed engine whose manifest matches the key in full is still usable.
    """
    engine_dir = Path(engine_dir)
    exact = engine_dir / engine_filename(expected)
    if exact.is_file():
        return check_engine(exact, expected, allow_rebuild)
    candidates = sorted(engine_dir.glob(f"{_slug(expected.graph)}-*.engine"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        return check_engine(exact, expected, allow_rebuild)
    decision = check_engine(candidates[-1], expected, allow_rebuild)
    if decision.usable:
        return decision
    return CacheDecision(decision.action, exact,
                         (f"engine: no {exact.name}; newest engine of {expected.graph!r} is {candidates[-1].name}",
                          *decision.reasons))


def load_failure_decision(engine_path: str | Path, error: BaseException | str,
                          allow_rebuild: bool = False) -> CacheDecision:
    """TensorRT refused an engine that passed ``check_engine``: treated like any other stale engine."""
    return _not_usable(Path(engine_path), [f"deserialize: TensorRT could not load the engine ({error})"],
                       allow_rebuild)
