"""Opening a checkpoint as a policy: which backend serves it (TensorRT engines, ONNX Runtime graphs exported
on first use, or torch), and the knobs every caller shares (default checkpoint, inference threads)."""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from pathlib import Path

import torch

from ..core.trajectory import TrajectorySpec
from ..core.vocabulary import DecisionVocabulary
from ..model.checkpoint import load_checkpoint, sha256_file, verify_checkpoint
from ..model.config import VLAConfig
from ..model.signing import load_trusted_keys, verify_signature
from ..model.tokenizer import load_tokenizer
from . import export
from .backend_select import resolve_backend
from .graph_policy import GraphPolicy
from .graph_spec import load_graph_specs
from .onnx_backend import OrtSessions
from .policy import TorchPolicy
from .tensorrt_runner import open_engine
from .trust import untrusted_engines, untrusted_graphs

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default_checkpoint"


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """An empty value means the checkpoint embedded in the package."""
    return Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT


def inference_threads(model_nodes: int = 2) -> int:
    """Intra-op threads for one of ``model_nodes`` policies running at once (the decision and action nodes).

    More threads than cores make the nodes' OpenMP teams wait on each other's preempted threads: on 2
    cores with another job running, two nodes with 2 threads each planned in 150-160 ms, with 1 in 70.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // model_nodes)


def load_policy(checkpoint: str | Path | None = "", backend: str = "auto", threads: int = 2,
                precision: str = "fp16", allow_rebuild: bool = False, trusted_keys: str | list = ""):
    """A DrivingPolicy for ``checkpoint`` on the requested backend.

    ``auto`` picks the fastest valid one: TensorRT engines (``<ckpt>/engines``) if TensorRT is here and every
    engine passes the cache rules, else ONNX Runtime on ``<ckpt>/onnx`` (exported on first use), else torch.
    An explicit request that cannot be met falls back with a warning. ``policy.backend_choice`` says why.
    With ``trusted_keys`` (``signing.load_trusted_keys``) the manifest must carry a signature by one of them.
    """
    path = resolve_checkpoint(checkpoint)
    trusted = load_trusted_keys(trusted_keys) if trusted_keys else {}
    if trusted:
        verify_signature(path, trusted)
    manifest = verify_checkpoint(path)
    torch.set_num_threads(threads)
    warnings: list[str] = []
    runners, specs, engines_ok, ort_runners, details = {}, {}, False, {}, ""
    if backend != "torch":
        try:
            specs = ensure_exported(path, sha256_file(path / "manifest.json"))
        except Exception as err:  # export problems must not stop the car: torch still drives
            warnings.append(f"ONNX export unavailable: {err}")
        refused = untrusted_graphs(path, trusted) if specs and trusted else ""
        if refused:  # graphs made or swapped after the owner signed: the signed checkpoint drives, on torch
            warnings.append(refused)
            specs = {}
        if specs:
            engines_ok, runners, details = open_engines(path / "engines", specs, precision, allow_rebuild)
            refused = untrusted_engines(path, trusted) if engines_ok and trusted else ""
            if refused:
                engines_ok, runners, details = False, {}, refused
            try:
                ort_runners = OrtSessions(specs, path / "onnx", threads)
            except Exception as err:
                warnings.append(f"ONNX Runtime cannot load the graphs: {err}")
    choice = resolve_backend(backend, engines_ok, bool(ort_runners), details=details)
    if choice.name == "tensorrt":
        policy = graph_policy(runners, specs, path / "onnx", manifest, "tensorrt", path)
    elif choice.name == "onnxruntime":
        policy = graph_policy(ort_runners, specs, path / "onnx", manifest, "onnxruntime", path)
    else:
        policy = TorchPolicy(load_checkpoint(path, verified=manifest))
    choice = dataclasses.replace(choice, warnings=tuple(warnings) + tuple(choice.warnings))
    policy.backend_choice = choice
    for w in choice.warnings:
        log.warning("backend: %s", w)
    log.info("backend %s (%s)", choice.name, choice.reason)
    return policy


def ensure_exported(path: Path, checkpoint_sha: str) -> dict:
    """Graphs for this exact checkpoint and exporter: reuse ``<ckpt>/onnx`` when its specs name both.

    Processes that open one checkpoint at once (``eval --workers``) export it once: the first to take
    ``<ckpt>/.onnx.lock`` exports into a temporary folder renamed into place, the others wait for the lock
    and then reuse its graphs (they used to export side by side and read each other's half-written files)."""
    with open(path / ".onnx.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        specs = _current_graphs(path / "onnx", checkpoint_sha)
        if specs is not None:
            return specs
        log.info("exporting ONNX graphs to %s", path / "onnx")
        return {s.name: s for s in export.export_checkpoint(path, path / "onnx")}  # staged, then swapped in


def _current_graphs(graph_dir: Path, checkpoint_sha: str) -> dict | None:
    """The specs in ``graph_dir`` if they were exported from this checkpoint by this exporter, else None."""
    if not (graph_dir / export.SPEC_FILE).is_file():
        return None
    specs = {s.name: s for s in load_graph_specs(graph_dir / export.SPEC_FILE)}
    stale = [f"{s.name} ({'checkpoint' if s.checkpoint_sha256 != checkpoint_sha else 'exporter ' + repr(s.exporter)})"
             for s in specs.values() if s.checkpoint_sha256 != checkpoint_sha or s.exporter != export.exporter_id()]
    if not stale:
        return specs
    log.warning("ONNX graphs in %s are stale (%s); re-exporting", graph_dir, ", ".join(stale))
    return None


def open_engines(engine_dir: Path, specs: dict, precision: str, allow_rebuild: bool):
    runners, reasons = {}, []
    for name, spec in specs.items():
        runner, decision = open_engine(engine_dir, spec, precision, allow_rebuild)
        if runner is None:
            reasons.append(f"{name}: {decision.summary()}")
        else:
            runners[name] = runner
    return not reasons, runners, "; ".join(reasons)


def graph_policy(runners: dict, specs: dict, graph_dir: Path, manifest: dict, backend_name: str, path: Path):
    cfg = VLAConfig.from_dict(manifest["config"])
    return GraphPolicy(runners, specs, graph_dir, load_tokenizer(path / "tokenizer"),
                       DecisionVocabulary.from_dict(manifest["vocabulary"]),
                       TrajectorySpec.from_dict(manifest["trajectory"]), cfg, manifest["model_version"], backend_name)
