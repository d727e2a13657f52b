"""Where train-rl's rollouts run: in this process, in spawned processes on this machine, or on Ray actors.
Each executor holds :class:`~vla_driver.rl.rollout.RolloutWorker` s and yields their results as they finish."""
from __future__ import annotations

import copy
import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

from .online_config import TrainRLConfig
from .rollout import RolloutResult, RolloutTask, RolloutWorker


class RolloutExecutor(ABC):
    """Runs rollout tasks on some workers; yields results as they finish (any order)."""

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


class RayExecutor(RolloutExecutor):
    """``workers`` Ray actors (a local Ray, or the cluster at ``address``), each a :class:`RolloutWorker`."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig, workers: int, address: str | None = None):
        try:  # optional: only this executor needs Ray
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise RuntimeError("--executor ray needs the 'ray' package, which is not installed "
                               "(pip install 'ray[default]'); use --executor process") from None
        self.ray = ray
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        actor = ray.remote(num_cpus=cfg.threads_per_worker)(RolloutWorker)
        self.actors = [actor.remote(str(checkpoint), cfg) for _ in range(max(1, workers))]
        self.pool = ActorPool(self.actors)

    def map(self, tasks):
        yield from self.pool.map_unordered(lambda a, task: a.rollout.remote(task), tasks)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def make_executor(checkpoint, cfg: TrainRLConfig, model=None) -> RolloutExecutor:
    """The executor ``cfg`` asks for. ``model``: ``checkpoint`` as this process loaded it, before any
    training; rollouts in this process (``workers=0``) use a copy of it, other workers load their own."""
    if cfg.executor == "ray":
        return RayExecutor(checkpoint, cfg, cfg.workers, cfg.ray_address)
    if cfg.workers == 0:
        return InlineExecutor(str(checkpoint), cfg, model)
    return ProcessExecutor(checkpoint, cfg, cfg.workers)
