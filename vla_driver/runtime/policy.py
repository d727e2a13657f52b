"""Policies behind the nodes: the torch reference backend and the factory that picks a backend."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..core.trajectory import KinematicLimits, Trajectory
from ..core.types import DecisionResult, Observation
from ..core.vocabulary import Decision, greedy_candidate

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default_checkpoint"


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """An empty value means the checkpoint embedded in the package."""
    return Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT


class TorchPolicy:
    """The reference backend: runs the PyTorch model directly (CPU here, CUDA on a car if asked)."""

    backend_name = "torch"

    def __init__(self, model, limits: KinematicLimits = KinematicLimits(), max_reasoning_tokens: int = 48):
        from ..model.inputs import InputEncoder

        self.model = model.eval()
        self.vocab, self.spec = model.vocab, model.spec
        self.model_version = getattr(model, "model_version", "untracked")
        self.encoder = InputEncoder(model.tokenizer, model.cfg.num_image_tokens, model.cfg.num_query_tokens)
        self.limits = limits
        self.max_reasoning_tokens = max_reasoning_tokens
        self.last_plan_violations: list[str] = []

    # ------------------------------------------------------------ decision
    @torch.inference_mode()
    def decision_table(self, observations: list[Observation], rows: list[list[int]] | None = None) -> np.ndarray:
        """(B, S, P) candidate log-probabilities, one forward pass for the whole batch."""
        enc = self.encoder
        self.model.select_adapter("decision")
        return self.model.decision_log_probs(*enc.batch(observations, rows or enc.decision_rows(observations))).numpy()

    def decide(self, obs: Observation, sample: bool = False, think: bool = False,
               rng: np.random.Generator | None = None) -> DecisionResult:
        start = time.perf_counter()
        reasoning, rows = "", None
        if think:
            reasoning, row = self.reason(obs, sample)
            rows = [row]
        table = self.decision_table([obs], rows)[0]
        return make_result(table, self.vocab, sample, rng, reasoning, start, self.model_version)

    @torch.inference_mode()
    def reason(self, obs: Observation, sample: bool = False) -> tuple[str, list[int]]:
        """Slow thinking: generate a short reasoning, then force the answer tag (answer stays in vocabulary)."""
        enc, model, tok = self.encoder, self.model, self.model.tokenizer
        model.select_adapter("decision")
        prompt = enc.prompt_ids(obs) + enc.ids("<think>")
        ids = torch.tensor([prompt])
        embeds = model.embed_prompt(enc.images([obs]), enc.ego([obs]), ids)
        close_id = tok.convert_tokens_to_ids("</think>")
        out = model.llm.generate(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_reasoning_tokens,
            do_sample=sample, eos_token_id=[close_id, tok.eos_token_id], pad_token_id=tok.pad_token_id,
        )[0].tolist()
        text = reasoning_from_ids(tok, out, self.vocab)
        row = prompt + enc.ids(text) + enc.ids("</think><answer>")
        return text, row

    # -------------------------------------------------------------- action
    @torch.inference_mode()
    def trajectory_modes(self, observations: list[Observation], decisions: list[Decision]) -> np.ndarray:
        enc = self.encoder
        self.model.select_adapter("action")
        return self.model.trajectories(*enc.batch(observations, enc.action_rows(observations, decisions))).numpy()

    def plan(self, obs: Observation, decision: Decision) -> Trajectory:
        modes = self.trajectory_modes([obs], [decision])[0]
        return select_mode(modes, decision, self, obs.speed)


def reasoning_from_ids(tokenizer, generated: list[int], vocab) -> str:
    """The reasoning text of generated ids: control tokens, answer tags and speed words dropped, so the
    forced answer that follows stays the only decision in the prompt (shared by every backend)."""
    close_id = tokenizer.convert_tokens_to_ids("</think>")
    dropped = set(tokenizer.all_special_ids) | {close_id} | set(tokenizer.convert_tokens_to_ids(list(vocab.speeds)))
    text = tokenizer.decode([t for t in generated if t not in dropped])
    return text.replace("<answer>", "").replace("</answer>", "").strip()


def select_mode(modes: np.ndarray, decision: Decision, policy, speed: float) -> Trajectory:
    """Pick the decision's speed mode and enforce kinematic limits (violations kept for diagnostics)."""
    traj = Trajectory(modes[policy.vocab.speed_index(decision.speed)], policy.spec)
    policy.last_plan_violations = traj.violations(speed, policy.limits)
    return traj.clip_to_limits(speed, policy.limits) if policy.last_plan_violations else traj


def make_result(log_table: np.ndarray, vocab, sample: bool, rng, reasoning: str, start: float,
                model_version: str) -> DecisionResult:
    probs = np.exp(log_table - log_table.max())
    probs /= probs.sum()
    flat = probs.ravel()
    if sample:
        idx = int((rng or np.random.default_rng()).choice(flat.size, p=flat))
    else:
        idx = greedy_candidate(flat)
    speed, path = vocab.candidate(idx)
    return DecisionResult(
        decision=Decision(speed, path, reasoning), probs=probs, log_prob=float(log_table.ravel()[idx]),
        latency_ms=(time.perf_counter() - start) * 1e3, model_version=model_version,
    )


def inference_threads(model_nodes: int = 2) -> int:
    """Intra-op threads for one of ``model_nodes`` policies running at once (the decision and action nodes).

    More threads than cores make the nodes' OpenMP teams wait on each other's preempted threads: on 2
    cores with another job running, two nodes with 2 threads each planned in 150-160 ms, with 1 in 70.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // model_nodes)


def load_policy(checkpoint: str | Path | None = "", backend: str = "auto", threads: int = 2,
                precision: str = "fp16", allow_rebuild: bool = False):
    """A DrivingPolicy for ``checkpoint`` on the requested backend.

    ``auto`` picks the fastest valid one: TensorRT engines (``<ckpt>/engines``) if TensorRT is here and every
    engine passes the cache rules, else ONNX Runtime on ``<ckpt>/onnx`` (exported on first use), else torch.
    An explicit request that cannot be met falls back with a warning. ``policy.backend_choice`` says why.
    """
    from ..model.checkpoint import load_checkpoint, sha256_file, verify_checkpoint
    from .backend_select import resolve_backend

    path = resolve_checkpoint(checkpoint)
    manifest = verify_checkpoint(path)
    torch.set_num_threads(threads)
    warnings: list[str] = []
    runners, specs, engines_ok, ort_runners, details = {}, {}, False, {}, ""
    if backend != "torch":
        try:
            specs = ensure_exported(path, sha256_file(path / "manifest.json"))
        except Exception as err:  # export problems must not stop the car: torch still drives
            warnings.append(f"ONNX export unavailable: {err}")
        if specs:
            engines_ok, runners, details = open_engines(path / "engines", specs, precision, allow_rebuild)
            try:
                from .onnx_backend import OrtSession

                ort_runners = {name: OrtSession(path / "onnx" / s.onnx_file, s.onnx_sha256, threads)
                               for name, s in specs.items()}
            except Exception as err:
                warnings.append(f"ONNX Runtime cannot load the graphs: {err}")
    choice = resolve_backend(backend, engines_ok, bool(ort_runners), details=details)
    if choice.name == "tensorrt":
        policy = graph_policy(runners, specs, path / "onnx", manifest, "tensorrt", path)
    elif choice.name == "onnxruntime":
        policy = graph_policy(ort_runners, specs, path / "onnx", manifest, "onnxruntime", path)
    else:
        policy = TorchPolicy(load_checkpoint(path))
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
    import fcntl
    import shutil
    import tempfile

    from .export import export_checkpoint

    with open(path / ".onnx.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        specs = _current_graphs(path / "onnx", checkpoint_sha)
        if specs is not None:
            return specs
        log.info("exporting ONNX graphs to %s", path / "onnx")
        staging = Path(tempfile.mkdtemp(prefix=".onnx-", dir=path))
        try:
            specs = {s.name: s for s in export_checkpoint(path, staging)}
            shutil.rmtree(path / "onnx", ignore_errors=True)
            staging.rename(path / "onnx")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return specs


def _current_graphs(graph_dir: Path, checkpoint_sha: str) -> dict | None:
    """The specs in ``graph_dir`` if they were exported from this checkpoint by this exporter, else None."""
    from .export import SPEC_FILE, exporter_id
    from .graph_spec import load_graph_specs

    if not (graph_dir / SPEC_FILE).is_file():
        return None
    specs = {s.name: s for s in load_graph_specs(graph_dir / SPEC_FILE)}
    stale = [f"{s.name} ({'checkpoint' if s.checkpoint_sha256 != checkpoint_sha else 'exporter ' + repr(s.exporter)})"
             for s in specs.values() if s.checkpoint_sha256 != checkpoint_sha or s.exporter != exporter_id()]
    if not stale:
        return specs
    log.warning("ONNX graphs in %s are stale (%s); re-exporting", graph_dir, ", ".join(stale))
    return None


def open_engines(engine_dir: Path, specs: dict, precision: str, allow_rebuild: bool):
    from .tensorrt_backend import open_engine

    runners, reasons = {}, []
    for name, spec in specs.items():
        runner, decision = open_engine(engine_dir, spec, precision, allow_rebuild)
        if runner is None:
            reasons.append(f"{name}: {decision.summary()}")
        else:
            runners[name] = runner
    return not reasons, runners, "; ".join(reasons)


def graph_policy(runners: dict, specs: dict, graph_dir: Path, manifest: dict, backend_name: str, path: Path):
    from ..core.trajectory import TrajectorySpec
    from ..core.vocabulary import DecisionVocabulary
    from ..model.config import VLAConfig
    from ..model.tokenizer import load_tokenizer
    from .graph_policy import GraphPolicy

    cfg = VLAConfig.from_dict(manifest["config"])
    return GraphPolicy(runners, specs, graph_dir, load_tokenizer(path / "tokenizer"),
                       DecisionVocabulary.from_dict(manifest["vocabulary"]),
                       TrajectorySpec.from_dict(manifest["trajectory"]), cfg, manifest["model_version"], backend_name)
