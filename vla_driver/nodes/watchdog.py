"""A deadline on a call that cannot be interrupted: inference.

A plan that overruns ``deadline_ms`` must not keep the car waiting for it: a hung backend (a GPU stuck, a
driver reset) may never return. :class:`PlanWatchdog` watches each plan from a thread of its own and calls
``on_overrun`` the moment the deadline passes, while the plan still runs; the node then publishes its stop
trajectory at once and throws the late plan away when it returns.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class PlanWatchdog:
    def __init__(self, deadline_s: float, on_overrun: Callable[[float], None]):
        """``on_overrun(stamp)`` runs on the watchdog's thread, once per overrunning plan, with the stamp
        passed to :meth:`arm`."""
        self.deadline_s, self.on_overrun = deadline_s, on_overrun
        self._cond = threading.Condition()
        self._armed_at: float | None = None  # monotonic start of the plan being watched
        self._stamp = 0.0
        self._fired = False  # the deadline of the plan being watched has passed
        self._answered = False  # ... and on_overrun went through
        self._closed = False
        self._thread = threading.Thread(target=self._watch, daemon=True, name="plan-watchdog")
        self._thread.start()

    def arm(self, stamp: float, since: float | None = None) -> None:
        """A plan for the input stamped ``stamp`` starts; its deadline counts from ``since`` (monotonic; the
        cycle's start, default now)."""
        with self._cond:
            self._armed_at, self._stamp = time.monotonic() if since is None else since, stamp
            self._fired = self._answered = False
            self._cond.notify()

    def disarm(self) -> bool:
        """The plan returned (or raised): True when the watchdog already answered it."""
        with self._cond:
            answered, self._armed_at = self._answered, None
            self._cond.notify()
            return answered

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._armed_at is None or self._fired:
                    self._cond.wait()
                    continue
                left = self._armed_at + self.deadline_s - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._fired = True
                try:
                    self.on_overrun(self._stamp)  # under the lock: disarm() waits until the stop went out
                    self._answered = True
                except Exception:  # noqa: BLE001 - the plan's own cycle answers instead; keep watching
                    log.exception("plan watchdog: answering an overrun failed")
