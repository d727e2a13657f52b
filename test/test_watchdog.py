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

    patient = PlanWatchdog(10.0, on_overrun)  # plans well inside its deadline, even on a busy machine
    try:
        for stamp in (1.0, 2.0, 3.0):
            patient.arm(stamp)
            assert patient.disarm() is False
        time.sleep(0.2)
        assert fired == []
    finally:
        patient.close()
    watchdog = PlanWatchdog(0.05, on_overrun)
    try:
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


def test_a_failing_answer_leaves_the_plan_to_answer_itself_and_the_watchdog_watching():
    calls = []

    def on_overrun(stamp: float) -> None:
        calls.append(stamp)
        if stamp == 1.0:
            raise RuntimeError("publisher gone")

    watchdog = PlanWatchdog(0.02, on_overrun)
    try:
        for stamp in (1.0, 2.0):
            watchdog.arm(stamp)
            deadline = time.monotonic() + 5.0
            while stamp not in calls and time.monotonic() < deadline:
                time.sleep(0.01)
            assert watchdog.disarm() is (stamp == 2.0)  # not answered: the late plan publishes its own stop
        assert calls == [1.0, 2.0]
    finally:
        watchdog.close()
