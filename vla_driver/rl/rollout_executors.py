"""Where train-rl's rollouts run: in this process, in spawned processes on this machine, or on Ray actors.
Each executor holds :class:`~vla_driver.rl.rollout.RolloutWorker` s and yields their results as they finish."""
from __future__ import annotations

import copy
import dataclasses
import logging
import multiprocessing
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..model.checkpoint import PLACED_BASE, base_root, read_manifest
from .online_config import TrainRLConfig
from .rollout import RolloutResult, RolloutTask, RolloutWorker

log = logging.getLogger(__name__)


class RolloutExecutor(ABC):
    """Runs rollout tasks on some workers; yields results as they finish (any order). ``replaced``: workers
    lost and replaced so far (their rollouts were run again)."""

    replaced = 0

    @abstractmethod
    def map(self, tasks: list[RolloutTask]) -> Iterator[RolloutResult]: ...

    @abstractmethod
    def close(self) -> None:
        """Release the workers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineExecutor(RolloutExecutor):
    """Rollouts in this process, one after another (``workers=0``). Given the model this process loaded
    from ``checkpoint``, the worker acts with a copy of it instead of loading the checkpoint again."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig, model=None):
        self.worker = RolloutWorker(checkpoint, cfg, None if model is None else copy.deepcopy(model))

    def map(self, tasks):
        for task in tasks:
            yield self.worker.rollout(task)

    def close(self) -> None:
        self.worker.close()


_PROCESS_WORKER: RolloutWorker | None = None


def _init_process_worker(checkpoint: str, cfg: TrainRLConfig) -> None:
    global _PROCESS_WORKER
    _PROCESS_WORKER = RolloutWorker(checkpoint, cfg)


def _run_in_process_worker(task: RolloutTask) -> RolloutResult:
    return _PROCESS_WORKER.rollout(task)


class ProcessExecutor(RolloutExecutor):
    """``workers`` spawned processes on this machine, each loading the checkpoint once."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig, workers: int):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_process_worker, initargs=(str(checkpoint), cfg))

    def map(self, tasks):
        futures = [self.pool.submit(_run_in_process_worker, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def pack_checkpoint(checkpoint) -> dict[str, bytes]:
    """A checkpoint's files as bytes (its ONNX graphs included, its engines and lock files not), and the
    files of a pretrained base it references under ``base/pretrained/``: everything a worker on another
    machine needs, with no shared file system."""
    root = Path(checkpoint)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and not any(part.startswith(".") or part == "engines" for part in p.relative_to(root).parts)}
    base = read_manifest(root).get("base")
    if base:
        source = base_root(root, base)
        files.update({f"base/{PLACED_BASE}/{name}": (source / name).read_bytes() for name in base["files"]})
    return files


def unpack_checkpoint(files: dict[str, bytes], dest: Path) -> Path:
    for rel, data in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest


class RayRolloutActor:
    """A :class:`RolloutWorker` on a Ray node, on its own copy of the checkpoint that came through Ray's
    object store; the learner's decision adapter comes with each call the same way."""

    def __init__(self, files: dict[str, bytes], cfg: TrainRLConfig):
        self.tmp = Path(tempfile.mkdtemp(prefix="vla-rollout-"))
        self.worker = RolloutWorker(str(unpack_checkpoint(files, self.tmp / "checkpoint")), cfg)

    def rollout(self, task: RolloutTask, adapter_state: dict) -> RolloutResult:
        return self.worker.rollout(dataclasses.replace(task, adapter_state=adapter_state))

    def close(self) -> None:
        self.worker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class RayExecutor(RolloutExecutor):
    """``workers`` Ray actors (a local Ray, or the cluster at ``address``), each a :class:`RayRolloutActor`.
    The checkpoint goes into the object store once and each iteration's adapter state once per iteration.
    An actor that dies (killed, node lost) is replaced and its rollout run again; ``replaced`` counts them.
    A rollout whose actors die ``MAX_ATTEMPTS`` times (an actor that cannot start, a rollout that runs out
    of memory) ends the run with one error naming the cause."""

    MAX_ATTEMPTS = 3

    def __init__(self, checkpoint: str, cfg: TrainRLConfig, workers: int, address: str | None = None):
        try:  # optional: only this executor needs Ray
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs the 'ray' package, which is not installed "
                               "(pip install 'vla_driver[ray]'); use --executor process") from None
        self.ray = ray
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
        self.files = ray.put(pack_checkpoint(checkpoint))
        self.actor_class = ray.remote(num_cpus=cfg.threads_per_worker)(RayRolloutActor)
        self.cfg = cfg
        self.actors = [self._start_actor() for _ in range(max(1, workers))]

    def _start_actor(self):
        return self.actor_class.remote(self.files, self.cfg)

    def map(self, tasks):
        ray = self.ray
        states = {id(t.adapter_state): t.adapter_state for t in tasks}
        refs = {key: ray.put(state) for key, state in states.items()}
        queue, idle, pending = list(tasks), list(self.actors), {}
        attempts: dict[int, int] = {}
        try:
            while queue or pending:
                while queue and idle:
                    actor, task = idle.pop(), queue.pop(0)
                    light = dataclasses.replace(task, adapter_state=None)
                    pending[actor.rollout.remote(light, refs[id(task.adapter_state)])] = (actor, task)
                [done], _ = ray.wait(list(pending), num_returns=1)
                actor, task = pending.pop(done)
                try:
                    result = ray.get(done)
                except ray.exceptions.RayActorError as err:  # the actor is gone: a new one runs the rollout again
                    attempts[id(task)] = attempts.get(id(task), 0) + 1
                    if attempts[id(task)] >= self.MAX_ATTEMPTS:
                        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                        raise RuntimeError(f"the rollout of {task.scenario} seed {task.seed} lost its Ray actor "
                                           f"{self.MAX_ATTEMPTS} times; last: {cause}") from None
                    log.warning("rollout actor died during %s seed %d: replacing it", task.scenario, task.seed)
                    self.replaced += 1
                    self.actors.remove(actor)
                    self.actors.append(self._start_actor())
                    idle.append(self.actors[-1])
                    queue.insert(0, task)
                    continue
                idle.append(actor)
                yield result
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        ray = self.ray
        closing = [actor.close.remote() for actor in self.actors]  # each removes its copy of the checkpoint
        ray.wait(closing, num_returns=len(closing), timeout=30)
        for actor in self.actors:
            ray.kill(actor)
        ray.shutdown()


def make_executor(checkpoint, cfg: TrainRLConfig, model=None) -> RolloutExecutor:
    """The executor ``cfg`` asks for. ``model``: ``checkpoint`` as this process loaded it, before any
    training; rollouts in this process (``workers=0``) use a copy of it, other workers load their own."""
    if cfg.executor == "ray":
        return RayExecutor(checkpoint, cfg, cfg.workers, cfg.ray_address)
    if cfg.workers == 0:
        return InlineExecutor(str(checkpoint), cfg, model)
    return ProcessExecutor(checkpoint, cfg, cfg.workers)
