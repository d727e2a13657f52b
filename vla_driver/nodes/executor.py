"""rclpy's MultiThreadedExecutor without Jazzy's busy loop (ros2/rclpy#1452, fixed upstream by #1547).

Jazzy's executor hands a ready callback to its thread pool and goes straight back to
``wait_for_ready_callbacks``, which yields every task not yet *started* again, without waiting.
So while the pool's workers are busy, the spin thread loops rebuilding the wait set of every node
in Python, holding the GIL that the callbacks it waits for need. Measured on the composed loop
(2 cores, py-spy --gil): the executor's own code held the GIL for 58-70 % of the samples, ~250
dispatches per 10 Hz cycle, and a cycle now and then stalled past the bridge's 1 s timeout while
its callbacks used 16 ms of CPU. Here the pool's ``submit`` returns once a worker has picked the task up.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from rclpy.executors import MultiThreadedExecutor as _RclpyMultiThreadedExecutor


class _HandoffPool(ThreadPoolExecutor):
    """A thread pool whose ``submit`` returns only once a worker has started the call (or it was cancelled)."""

    POLL_S = 0.05  # how often a waiting submitter looks for a cancelled call

    def submit(self, fn, /, *args, **kwargs) -> Future:
        started = threading.Event()

        def run():
            started.set()
            return fn(*args, **kwargs)

        future = super().submit(run)
        while not started.wait(self.POLL_S) and not future.done():  # waits with the GIL released
            pass
        return future


class MultiThreadedExecutor(_RclpyMultiThreadedExecutor):
    """Drop-in MultiThreadedExecutor: rclpy's own spin loop and callback groups; its pool hands each task
    to a worker before the loop goes back to the wait set, so a queued task is never yielded twice."""

    def __init__(self, num_threads: int | None = None, *, context=None):
        super().__init__(num_threads, context=context)
        workers = self._executor._max_workers  # rclpy's choice when num_threads is None
        self._executor.shutdown(wait=False)  # it has started no thread yet
        self._executor = _HandoffPool(workers)
