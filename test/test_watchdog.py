"""PlanWatchdog: the deadline on a plan that cannot be interrupted (no ROS needed)."""
import threading
import time

from vla_driver.nodes.watchdog import PlanWatchdog


def test_it_answers_an_overrunning_plan_once_while_it_runs_and_never_one_that_returned_in_time():
    fired: list[tuple[float, float]] = []
    done = threading.Event()

    def on_overrun(stamp: float) -> None:
        fired.append((stamp, time.monotonic()))
        done.set()

    watchdog = PlanWatchdog(0.05, on_overrun)
    try:
        for stamp in (1.0, 2.0, 3.0):  # plans well inside the deadline
            watchdog.arm(stamp)
            assert watchdog.disarm() is False
        time.sleep(0.2)
        assert fired == []
        armed = time.monotonic()
        watchdog.arm(4.0)
        assert done.wait(5.0)  # the plan has not returned
        assert fired[0][0] == 4.0 and fired[0][1] - armed >= 0.05
        time.sleep(0.2)
        assert len(fired) == 1  # once per plan, however long it hangs
        assert watchdog.disarm() is True  # the late plan learns it was answered
        watchdog.arm(5.0, since=time.monotonic() - 1.0)  # its cycle began long ago: over at once
        deadline = time.monotonic() + 5.0
        while len(fired) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [stamp for stamp, _ in fired] == [4.0, 5.0]
    finally:
        watchdog.close()
