"""The ROS nodes with real rclpy, in process: each test has its own Context and MultiThreadedExecutor.

The harness plays camera, odometry and navigation drivers on wall time (as on the car) and listens
to what the nodes publish; the last tests drive simulator episodes through all four nodes. Tests wait
for messages with generous deadlines and never assert how fast they came: the machine may be busy.
"""
import json
import os
import threading
import time
from collections import defaultdict
from dataclasses import fields

import numpy as np
import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
DOMAIN_ID = 141  # distinct from the other ROS test files; passed to every rclpy.init below

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import Twist  # noqa: E402
from nav_msgs.msg import Odometry, Path  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from vla_driver.core.metrics import EpisodeResult  # noqa: E402
from vla_driver.core.trajectory import Trajectory, constant_motion, stop_trajectory  # noqa: E402
from vla_driver.harness.ros_loop import run_closed_loop  # noqa: E402
from vla_driver.nodes.action_node import ActionNode, ActionParams  # noqa: E402
from vla_driver.nodes.controller_node import ControllerNode  # noqa: E402
from vla_driver.nodes.convert import (  # noqa: E402
    EgoState,
    decision_from_string,
    path_to_trajectory,
    rgb_to_image,
    stamp_to_seconds,
    state_to_odometry,
    trajectory_to_path,
)
from vla_driver.nodes.decision_node import DecisionNode, DecisionParams  # noqa: E402
from vla_driver.nodes.executor import MultiThreadedExecutor  # noqa: E402
from vla_driver.nodes.spin import stop_executor  # noqa: E402

SPEED = 8.0
DEADLINE_S = 60.0  # a wait for messages gives up after this; only a broken node should ever reach it
pytestmark = pytest.mark.usefixtures("node_threads")


class Harness:
    """A Context, an executor spinning in a thread, and a node that plays the drivers and listens."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = Node("test_harness", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.nodes = [self.node]
        self.executor.add_node(self.node)
        self.received = defaultdict(list)
        self._lock = threading.Lock()
        self._spinning = True
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self.image_pub = self.node.create_publisher(Image, "image", 5)
        self.odom_pub = self.node.create_publisher(Odometry, "odom", 10)
        self.nav_pub = self.node.create_publisher(String, "navigation", 10)
        self.rgb = np.random.default_rng(0).integers(0, 255, (128, 256, 3), dtype=np.uint8)
        self.stamps: list[float] = []

    def _spin(self) -> None:
        while self._spinning:
            self.executor.spin_once(timeout_sec=0.05)

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def listen(self, msg_type, topic: str) -> None:
        def store(msg):
            with self._lock:
                self.received[topic].append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, store, 10)

    def messages(self, topic: str, since: float = 0.0) -> list:
        with self._lock:
            return [m for t, m in self.received[topic] if t >= since]

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def publish_inputs(self, image: bool = True, odom: bool = True, speed: float = SPEED) -> float:
        stamp = self.now()
        if odom:
            self.odom_pub.publish(state_to_odometry(EgoState(speed, 0.0, 0.0, 0.0, 0.0, stamp)))
        if image:
            self.image_pub.publish(rgb_to_image(self.rgb, stamp))
        return stamp

    def drive_until(self, condition, timeout_s: float = DEADLINE_S, hz: float = 20.0, also=None, **inputs) -> bool:
        """Publish inputs at ``hz``, like running sensor drivers, until ``condition()`` holds (False after
        ``timeout_s``). ``also(stamp)`` publishes more per tick; every stamp sent is kept in ``stamps``."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            stamp = self.publish_inputs(**inputs)
            self.stamps.append(stamp)
            if also is not None:
                also(stamp)
            time.sleep(1.0 / hz)
            if condition():
                return True
        return False

    def trajectories(self, start: int = 0) -> list[tuple[Trajectory, float]]:
        """Received trajectories (from the ``start``-th on) with their stamps."""
        return [path_to_trajectory(p) for p in self.messages("trajectory")[start:]]

    def diagnostics(self, node_name: str, since: float = 0.0) -> list[DiagnosticStatus]:
        return [s for a in self.messages("/diagnostics", since) for s in a.status
                if s.name == f"vla_driver: {node_name}"]

    def close(self) -> None:
        self._spinning = False
        self.thread.join(timeout=5.0)
        stop_executor(self.executor)
        for node in self.nodes:
            node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture()
def harness():
    h = Harness()
    for msg_type, topic in ((Path, "trajectory"), (MarkerArray, "trajectory_markers"), (String, "decision"),
                            (Twist, "cmd_vel"), (DiagnosticArray, "/diagnostics")):
        h.listen(msg_type, topic)
    yield h
    h.close()


@pytest.fixture(scope="module")
def second_policy(tiny_checkpoint):
    """A second instance: a policy switches LoRA adapters per call, so two nodes never share one."""
    from vla_driver.runtime.loading import load_policy

    return load_policy(tiny_checkpoint, backend="torch")


def action_node(harness, policy, **params) -> ActionNode:
    """Deadline and input age far above what a busy machine takes: only missing inputs make a fallback."""
    overrides = [Parameter(k, value=v) for k, v in {"max_input_age_s": 1.0, "deadline_ms": 30000.0, **params}.items()]
    return harness.add(ActionNode(policy, context=harness.context, parameter_overrides=overrides))


def near(stamp: float, stamps) -> bool:
    """``stamp`` is one of ``stamps`` (float seconds at epoch scale keep ~0.2 us through a message)."""
    return min(abs(stamp - s) for s in stamps) < 1e-6


def is_stop(traj: Trajectory, speed: float = SPEED) -> bool:
    return np.allclose(traj.poses, stop_trajectory(speed, traj.spec).poses, atol=1e-6)


def planned(trajectories) -> list[tuple[Trajectory, float]]:
    return [(traj, stamp) for traj, stamp in trajectories if not is_stop(traj)]


def test_decision_and_action_nodes_publish_decision_and_path_for_the_image(harness, tiny_policy, second_policy):
    decision = harness.add(DecisionNode(tiny_policy, context=harness.context,
                                        parameter_overrides=[Parameter("rate_hz", value=5.0)]))
    action = action_node(harness, second_policy)
    assert {f.name for f in fields(DecisionParams)} <= set(decision._parameters)
    assert {f.name for f in fields(ActionParams)} <= set(action._parameters)
    harness.nav_pub.publish(String(data="Take the next exit on the right"))
    assert harness.drive_until(lambda: harness.messages("decision") and len(planned(harness.trajectories())) >= 10), \
        f"no decision and 10 planned trajectories within {DEADLINE_S} s"
    traj, stamp = planned(harness.trajectories())[-1]
    assert near(stamp, harness.stamps) and traj.spec == second_policy.spec  # stamped with an input image's time
    # before the first image the node sends stop trajectories; once inputs flow it never has to
    assert action.diagnostics.counters["fallbacks"] == action.diagnostics.counters["fallback_stale_input"]

    def markers() -> list:  # the RViz view of that plan (published right after its path)
        return [m.markers[0] for m in harness.messages("trajectory_markers") if near(stamp_to_seconds(
            m.markers[0].header.stamp), [stamp])]

    assert harness.drive_until(markers)
    assert markers()[0].color.g > markers()[0].color.r  # green: a planned trajectory, not the fallback
    result, decision_stamp = decision_from_string(harness.messages("decision")[-1], tiny_policy.vocab)
    assert near(decision_stamp, harness.stamps) and result.probs.sum() == pytest.approx(1.0, abs=1e-3)
    assert json.loads(harness.messages("decision")[-1].data)["model_version"] == tiny_policy.model_version
    stats = action.diagnostics.stats()
    assert 0 < stats["rate_hz"] < 13.0  # paced by its 10 Hz timer, not by the 20 Hz camera (slower is allowed)
    print(f"\naction node: {stats}; decision node: {decision.diagnostics.stats()}")


def test_stale_input_stops_with_error_and_recovers_when_inputs_return(harness, tiny_policy):
    action_node(harness, tiny_policy)
    assert harness.drive_until(lambda: planned(harness.trajectories()))
    start, t_stale = len(harness.messages("trajectory")), time.monotonic()
    assert harness.drive_until(lambda: any(is_stop(t) for t, _ in harness.trajectories(start)), image=False)
    first_stop = start + next(i for i, (t, _) in enumerate(harness.trajectories(start)) if is_stop(t))
    # the camera stays off (odometry keeps coming): every cycle from then on is a stop trajectory
    assert harness.drive_until(lambda: len(harness.messages("trajectory")) >= first_stop + 5, image=False)
    assert all(is_stop(t) for t, _ in harness.trajectories(first_stop))
    assert harness.drive_until(lambda: any(s.level == DiagnosticStatus.ERROR
                                           for s in harness.diagnostics("action_node", since=t_stale)), image=False)
    errors = [s for s in harness.diagnostics("action_node", since=t_stale) if s.level == DiagnosticStatus.ERROR]
    assert "image" in errors[0].message
    back, t_back = len(harness.messages("trajectory")), time.monotonic()
    assert harness.drive_until(lambda: planned(harness.trajectories(back)))
    # published at once on the level change; WARN because no decision arrived (default decision used)
    assert harness.drive_until(lambda: any(s.level == DiagnosticStatus.WARN
                                           for s in harness.diagnostics("action_node", since=t_back)))


def test_malformed_messages_are_rejected_with_a_diagnostic_and_the_node_keeps_publishing(harness, tiny_policy):
    action = action_node(harness, tiny_policy)
    assert harness.drive_until(lambda: planned(harness.trajectories()))
    bad_encoding = rgb_to_image(harness.rgb, harness.now())
    bad_encoding.encoding = "yuv422"
    short = rgb_to_image(harness.rgb, harness.now())
    short.data = bytes(100)
    nan_odom = state_to_odometry(EgoState(float("nan"), 0.0, 0.0, 0.0, 0.0, harness.now()))
    t_bad, counters = time.monotonic(), action.diagnostics.counters

    def shown() -> list[str]:
        return [kv.value for s in harness.diagnostics("action_node", since=t_bad) for kv in s.values
                if kv.key == "last_rejected"]

    for msg, pub, reason in ((bad_encoding, harness.image_pub, "image: unknown_encoding"),
                             (short, harness.image_pub, "image: wrong_size"), (nan_odom, harness.odom_pub, "odom: non_finite")):
        pub.publish(msg)
        # odometry only meanwhile: no newer camera frame can push a bad one out of the sensor-data queue
        assert harness.drive_until(lambda r=reason: any(v.startswith(r) for v in shown()), image=False), reason
    assert counters["rejected_image"] == 2 and counters["rejected_odom"] == 1
    after = harness.now()  # a plan for an image sent after all the bad input: the node goes on
    assert harness.drive_until(lambda: any(stamp > after for _, stamp in planned(harness.trajectories())))


class HangingPolicy:
    """A policy whose plan blocks while ``hang`` is set (a backend stuck on the GPU), until ``release``."""

    def __init__(self, policy):
        self._policy, self.hang, self.release = policy, threading.Event(), threading.Event()
        self.hung_stamps: list[float] = []

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def plan(self, obs, decision):
        if self.hang.is_set():
            self.hung_stamps.append(obs.stamp)
            self.release.wait(DEADLINE_S)
        return self._policy.plan(obs, decision)


def test_a_plan_past_deadline_ms_is_answered_by_a_stop_at_the_deadline_not_when_it_returns(harness, tiny_policy):
    policy = HangingPolicy(tiny_policy)
    action = action_node(harness, policy, deadline_ms=2000.0)  # far above a busy machine's plan
    assert harness.drive_until(lambda: planned(harness.trajectories()))
    start, t_hang = len(harness.messages("trajectory")), time.monotonic()
    policy.hang.set()
    assert harness.drive_until(lambda: any(is_stop(t) for t, _ in harness.trajectories(start)))
    stop_stamp = next(stamp for t, stamp in harness.trajectories(start) if is_stop(t))
    assert not policy.release.is_set() and len(policy.hung_stamps) == 1  # the plan still hangs: one cycle
    assert near(stop_stamp, policy.hung_stamps)  # the stop answers the hung plan's input
    assert harness.drive_until(lambda: any(s.level == DiagnosticStatus.ERROR and "still running after 2000 ms" in s.message
                                           for s in harness.diagnostics("action_node", since=t_hang)))
    policy.hang.clear()
    policy.release.set()
    back = len(harness.messages("trajectory"))
    assert harness.drive_until(lambda: planned(harness.trajectories(back)))
    # the late plan was thrown away: one answer for that input, the stop
    assert [is_stop(t) for t, stamp in harness.trajectories(start) if near(stamp, policy.hung_stamps)] == [True]
    assert action.diagnostics.counters["fallback_deadline"] == 1



def test_controller_follows_a_left_curve_and_brakes_when_the_trajectory_goes_stale(harness):
    overrides = [Parameter("trajectory_timeout_s", value=1.0), Parameter("max_input_age_s", value=1.0)]
    harness.add(ControllerNode(context=harness.context, parameter_overrides=overrides))
    path_pub = harness.node.create_publisher(Path, "trajectory", 10)
    curve = constant_motion(SPEED, 0.2, stop_trajectory(0.0).spec)

    def follows_curve() -> bool:  # left = positive yaw rate
        return any(abs(t.linear.x - SPEED) < 1.5 and t.angular.z > 0.05 for t in harness.messages("cmd_vel"))

    assert harness.drive_until(follows_curve, image=False,
                               also=lambda stamp: path_pub.publish(trajectory_to_path(curve, stamp)))
    start, t_stale = len(harness.messages("cmd_vel")), time.monotonic()

    def braking() -> list[int]:
        return [i for i, t in enumerate(harness.messages("cmd_vel")[start:], start)
                if t.linear.x == 0.0 and t.angular.z == 0.0]

    assert harness.drive_until(braking, image=False)  # odometry only
    first_brake = braking()[0]
    # the trajectory stays stale: every command from then on brakes
    assert harness.drive_until(lambda: len(harness.messages("cmd_vel")) >= first_brake + 5, image=False)
    assert all(t.linear.x == 0.0 and t.angular.z == 0.0 for t in harness.messages("cmd_vel")[first_brake:])
    assert harness.drive_until(lambda: any(s.level == DiagnosticStatus.ERROR
                                           for s in harness.diagnostics("controller_node", since=t_stale)),
                               image=False)


def test_frozen_heap_keeps_live_objects_out_of_full_collections_while_the_loop_spins():
    import gc

    from vla_driver.nodes.spin import frozen_heap

    with frozen_heap():
        frozen = gc.get_freeze_count()  # torch, rclpy, the policies: never walked by a collection in here
        assert frozen > 10_000 and len(gc.get_objects(generation=2)) < frozen / 100
    assert gc.get_freeze_count() == 0  # given back to the collector: the loop's nodes can be freed


def test_simulator_episodes_run_through_the_bridge_and_all_nodes(tiny_checkpoint, tiny_policy, second_policy):
    runs = [
        run_closed_loop("highway", seed=1, checkpoint=str(tiny_checkpoint), backend="torch", duration_s=2.0,
                        step_timeout_s=5.0, record_frames=True, domain_id=DOMAIN_ID, progress=False),
        # a second episode in the same process, reusing loaded policies
        run_closed_loop("merge", seed=2, duration_s=1.0, step_timeout_s=5.0, domain_id=DOMAIN_ID,
                        policies=(tiny_policy, second_policy), progress=False),
    ]
    for run, cycles in zip(runs, (20, 10), strict=True):
        result = run.result
        assert isinstance(result, EpisodeResult) and result.duration_s == pytest.approx(cycles / 10)
        assert result.extras["cycles"] == cycles and result.extras["missed_cycles"] == 0
        assert len(run.trajectories) == cycles  # exactly one answer per camera image (lockstep)
        assert run.decisions and result.extras["nodes"]["controller"]["rate_hz"] == pytest.approx(10.0, rel=0.05)
        print(f"\n{result.scenario}: {result.termination}, {result.extras}")
    assert len(runs[0].frames) == 20 and runs[0].frames[0].shape == (128, 256, 3)


def test_executor_dispatches_a_queued_callback_once_while_its_workers_are_busy():
    """Jazzy's rclpy executor hands a queued callback to its pool again and again until a worker starts
    it (ros2/rclpy#1452), spinning under the GIL; ours dispatches it once and waits for the worker."""
    from rclpy.callback_groups import ReentrantCallbackGroup

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = Node("busy_worker", context=context)
    executor = MultiThreadedExecutor(num_threads=1, context=context)  # one worker: the next message queues
    executor.add_node(node)
    runs = []

    def slow(msg: String) -> None:
        runs.append(msg.data)
        time.sleep(0.3)

    sub = node.create_subscription(String, "busy", slow, 10, callback_group=ReentrantCallbackGroup())
    pub = node.create_publisher(String, "busy", 10)
    dispatched, wait_for_ready = [], executor.wait_for_ready_callbacks

    def counting(*args, **kwargs):
        task, entity, owner = wait_for_ready(*args, **kwargs)
        dispatched.append(entity)
        return task, entity, owner

    executor.wait_for_ready_callbacks = counting
    try:
        for i in range(3):
            pub.publish(String(data=str(i)))
        deadline = time.monotonic() + DEADLINE_S
        while len(runs) < 3 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        time.sleep(0.4)  # the last callback ends; nothing may be dispatched meanwhile
        executor.spin_once(timeout_sec=0.05)
    finally:
        stop_executor(executor)
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert runs == ["0", "1", "2"]
    # One dispatch per message; one more is a benign race (a worker took the task, not yet marked running).
    assert 3 <= sum(entity is sub for entity in dispatched) <= 4


def bridge(harness, duration_s: float, step_timeout_s: float):
    """A simulator bridge on the harness (highway, sim time), the list its episode result lands in, and a
    publisher that plays the pipeline's cmd_vel."""
    from vla_driver.nodes.sim_bridge_node import SimBridgeNode

    done = []
    overrides = [Parameter(k, value=v) for k, v in {"scenario": "highway", "duration_s": duration_s,
                                                     "step_timeout_s": step_timeout_s, "use_sim_time": True}.items()]
    harness.add(SimBridgeNode(on_done=done.append, context=harness.context, parameter_overrides=overrides))
    return done, harness.node.create_publisher(Twist, "cmd_vel", 10)


def test_bridge_steps_on_each_command_and_counts_missed_cycles_after_the_timeout(harness):
    done, cmd_pub = bridge(harness, 1.0, 0.5)
    harness.listen(String, "episode")
    seen = []

    def answer(msg: Image) -> None:  # a "pipeline" that answers the first half second of images only
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        seen.append(stamp)
        if stamp < 0.45:
            bad = Twist()
            bad.linear.x = float("nan")
            cmd_pub.publish(bad)  # rejected: does not count as the cycle's command
            cmd = Twist()
            cmd.linear.x = 5.0
            cmd_pub.publish(cmd)

    harness.node.create_subscription(Image, "camera/front/image_raw", answer, 10)  # the default rig: front
    harness.listen(Odometry, "odom")
    deadline = time.monotonic() + 20.0
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
    [result] = done
    assert result.duration_s == pytest.approx(1.0) and seen[:3] == pytest.approx([0.0, 0.1, 0.2])
    assert result.extras["cycles"] == 10 and result.extras["missed_cycles"] == 5
    time.sleep(0.2)
    summary = json.loads(harness.messages("episode")[-1].data)
    assert summary["extras"]["missed_cycles"] == 5 and summary["scenario"] == "highway"
    assert harness.nodes[-1].diagnostics.counters["rejected_cmd_vel"] == 5


def test_bridge_publishes_the_first_cycle_again_until_it_is_answered_without_a_missed_cycle(harness):
    """A reader matched late loses the first frame: sim time waits for the pipeline instead of stepping blind."""
    done, cmd_pub = bridge(harness, 0.5, 0.3)
    seen = []

    def answer(msg: Image) -> None:  # a pipeline that only hears from the third frame on
        seen.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
        if len(seen) > 2:
            cmd = Twist()
            cmd.linear.x = 5.0
            cmd_pub.publish(cmd)

    harness.node.create_subscription(Image, "camera/front/image_raw", answer, 10)
    harness.listen(Odometry, "odom")
    deadline = time.monotonic() + 20.0
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
    [result] = done
    assert seen[:4] == pytest.approx([0.0, 0.0, 0.0, 0.1])  # the first cycle three times, then time runs
    assert result.extras["start_retries"] == 2 and result.extras["missed_cycles"] == 0
    assert result.extras["cycles"] == 5

@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_image_encodings_decode_to_rgb(encoding):
    from vla_driver.nodes.convert import image_to_pil, image_to_rgb

    rgb = np.random.default_rng(1).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    if encoding == "mono8":
        rgb[:] = rgb[:, :, :1]
    channels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": rgb[:, :, :1],
                "rgba8": np.dstack([rgb, np.full((4, 6), 7, np.uint8)]),
                "bgra8": np.dstack([rgb[:, :, ::-1], np.full((4, 6), 7, np.uint8)])}[encoding]
    padded = np.zeros((4, channels.shape[1] * channels.shape[2] + 2), np.uint8)  # row padding in step
    padded[:, : channels.shape[1] * channels.shape[2]] = channels.reshape(4, -1)
    msg = Image(height=4, width=6, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    np.testing.assert_array_equal(np.asarray(image_to_pil(msg)), rgb)  # the unpack a rig's frames take


def test_trajectory_path_and_decision_json_round_trip(tiny_policy):
    from vla_driver.core.types import DecisionResult
    from vla_driver.core.vocabulary import Decision
    from vla_driver.nodes.convert import BadMessage, decision_to_string

    traj = constant_motion(6.0, -0.3, stop_trajectory(0.0).spec)
    back, stamp = path_to_trajectory(trajectory_to_path(traj, 12.25, "base_link"))
    np.testing.assert_allclose(back.poses, traj.poses, atol=1e-9)
    assert stamp == 12.25 and back.spec == traj.spec
    with pytest.raises(BadMessage, match="wrong_frame"):
        path_to_trajectory(trajectory_to_path(traj, 1.0, "map"), frame_id="base_link")
    vocab = tiny_policy.vocab
    probs = np.full((len(vocab.speeds), len(vocab.paths)), 1.0 / vocab.num_candidates)
    result = DecisionResult(Decision(vocab.speeds[1], vocab.paths[2], "why"), probs, -1.5, 3.0, "v1")
    decoded, t = decision_from_string(decision_to_string(result, vocab, 4.5), vocab)
    assert (decoded.decision, t, decoded.model_version) == (result.decision, 4.5, "v1")
    np.testing.assert_allclose(decoded.probs, probs, atol=1e-6)
    with pytest.raises(BadMessage, match="unknown_speed"):
        decision_from_string(String(data=json.dumps({"speed": "FLY", "path": vocab.paths[0], "stamp": 0})), vocab)


def test_an_oversized_image_or_navigation_is_refused_before_any_work_on_it():
    from vla_driver.nodes.convert import BadMessage, image_to_pil, image_to_rgb
    from vla_driver.nodes.inputs import ObservationAssembler

    huge = Image(height=8000, width=8000, encoding="rgb8", step=8000 * 3)  # its 192 MB are never looked at
    for decode in (image_to_rgb, image_to_pil):
        with pytest.raises(BadMessage, match="8000x8000 is over"):
            decode(huge)
    assembler = ObservationAssembler(default_navigation="keep lane")
    with pytest.raises(BadMessage, match="1000000 characters"):
        assembler.on_navigation(String(data="x" * 1_000_000))
    assert assembler.navigation == "keep lane"  # the last good instruction stands


def test_an_ok_status_names_no_earlier_rejection_while_the_counters_keep_it(harness):
    from vla_driver.nodes.convert import BadMessage
    from vla_driver.nodes.diagnostics import OK, WARN, NodeDiagnostics

    diagnostics = NodeDiagnostics(harness.node)

    def keys() -> set[str]:
        return {kv.key for kv in diagnostics.status().values}

    diagnostics.reject("image", BadMessage("wrong_size", "100 bytes"))
    assert "last_rejected" in keys()
    diagnostics.set_status(WARN, "no decision yet")  # still not OK: the rejection stays in view
    assert "last_rejected" in keys()
    diagnostics.set_status(OK, "KEEP, STRAIGHT")
    assert "last_rejected" not in keys() and diagnostics.counters["rejected_image"] == 1


def test_a_parameter_the_node_cannot_run_with_stops_it_in_one_line_and_descriptors_carry_ranges():
    import subprocess
    import sys
    from pathlib import Path

    from rclpy.node import Node

    from vla_driver.nodes.controller_node import ControllerParams
    from vla_driver.nodes.params import declare_params

    executable = str(Path(sys.executable).with_name("controller_node"))  # the console script ros2 run starts
    done = subprocess.run([executable, "--ros-args", "-p", "rate_hz:=-1.0"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ROS_DOMAIN_ID": "199"})
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert "not starting: parameter rate_hz" in done.stderr + done.stdout
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=199)
    try:
        node = Node("ranges", context=context)
        declare_params(node, ControllerParams)
        limits = node.describe_parameter("rate_hz").floating_point_range[0]
        assert (limits.from_value, limits.to_value) == (0.0, float("inf"))
        assert not node.describe_parameter("frame_id").floating_point_range  # only the positive ones
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_backend_that_fell_short_of_the_request_keeps_the_status_at_warn_and_names_why(harness, tmp_path):
    """ONNX graphs damaged on disk: the node drives on torch, and every status says so (not a silent OK)."""
    import shutil

    from vla_driver.nodes.diagnostics import OK, WARN, NodeDiagnostics
    from vla_driver.runtime.loading import DEFAULT_CHECKPOINT, load_policy

    checkpoint = shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "ckpt")
    weights = checkpoint / "onnx" / "weights.onnx.data"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    diagnostics = NodeDiagnostics(harness.node)
    diagnostics.set_backend(load_policy(checkpoint, backend="onnxruntime"))
    diagnostics.set_status(OK, "KEEP, STRAIGHT")
    status = diagnostics.status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == WARN and values["backend"] == "torch"
    assert "cannot load the graphs" in status.message and "weights.onnx.data" in values["backend_warnings"]
    diagnostics.set_backend(load_policy(DEFAULT_CHECKPOINT, backend="onnxruntime"))
    assert diagnostics.status().level == OK and "backend_warnings" not in {kv.key for kv in diagnostics.status().values}
