"""rclpy's MultiThreadedExecutor without Jazzy's busy loop (ros2/rclpy#1452, fixed upstream by #1547).

Jazzy's executor hands a ready callback to its thread pool and goes straight back to
``wait_for_ready_callbacks``, which yields every task not yet *started* again, without waiting.
So while the pool's workers are busy, the spin thread loops rebuilding the wait set of every node
in Python, holding the GIL that the callbacks it waits for need. Measured on the composed loop
(2 cores, py-spy --gil): the executor's own code held the GIL for 58-70 % of the samples, ~250
dispatches per 10 Hz cycle, and a cycle now and then stalled past the bridge's 1 s timeout while
its callbacks used 16 ms of CPU. Here the spin thread waits until a worker has picked the task up.
"""
from __future__ import annotations

import threading

from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    ShutdownException,
    TimeoutException,
)
from rclpy.executors import MultiThreadedExecutor as _RclpyMultiThreadedExecutor


class MultiThreadedExecutor(_RclpyMultiThreadedExecutor):
    """Drop-in MultiThreadedExecutor: the same thread pool and callback groups, one dispatch per callback."""

    HANDOFF_POLL_S = 0.05  # how often the waiting spin thread looks for shutdown

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            task, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        started = threading.Event()

        def run() -> None:
            started.set()
            task()

        self._executor.submit(run)
        self._futures.append(task)
        # A queued task must not be yielded again: wait (GIL released) until a worker runs it.
        while not started.wait(self.HANDOFF_POLL_S) and not self._is_shutdown:
            pass
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exception of a callback, as rclpy's executor does
