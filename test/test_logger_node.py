"""The experience logger node over real rclpy pub/sub: what it records, how little it costs the callbacks."""
import json
import os
import threading
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
DOMAIN_ID = 151  # distinct from the other ROS test files (141 nodes, 142 launch, 152 replay)

import rclpy  # noqa: E402
from conftest import wait_until  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import Twist  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from nav_msgs.msg import Path as PathMsg  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool, Empty, String  # noqa: E402

from vla_driver.core.trajectory import constant_motion, stop_trajectory  # noqa: E402
from vla_driver.experience.reader import read_samples  # noqa: E402
from vla_driver.experience.segments import KEEP_NAME, SegmentWriter, list_segments  # noqa: E402
from vla_driver.nodes.convert import EgoState, rgb_to_image, state_to_odometry, trajectory_to_path  # noqa: E402
from vla_driver.nodes.executor import MultiThreadedExecutor  # noqa: E402
from vla_driver.nodes.logger_node import ROLES, LoggerNode, LoggerParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEED = 6.0


class CountingWriter(SegmentWriter):
    """The real writer, counting what the logger hands it per recorded topic: a test waits for the last
    message instead of guessing how long delivery takes on a busy machine."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handed, self._handed_lock = Counter(), threading.Lock()

    def write(self, topic: str, t_ns: int, cdr_bytes: bytes) -> bool:
        with self._handed_lock:
            self.handed[topic] += 1
        return super().write(topic, t_ns, cdr_bytes)


class Rig:
    """A Context, an executor thread, the logger under test and a node playing the stack's publishers."""

    def __init__(self, writer=None, **params):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.logger = LoggerNode(writer, context=self.context, parameter_overrides=overrides)
        self.node = Node("stack", context=self.context)
        self.pubs = {role: self.node.create_publisher(cls, role if role != "takeover" else "/vla/takeover",
                                                      QoSProfile(depth=100))
                     for role, cls in (("image", Image), ("odom", Odometry), ("navigation", String),
                                       ("decision", String), ("trajectory", PathMsg), ("cmd_vel", Twist),
                                       ("takeover", Bool))}
        self.diagnostics = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        for n in (self.logger, self.node):
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5.0
        logged = [p for p in self.pubs.values() if p.topic_name in self.logger.recording]
        while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in logged):
            time.sleep(0.02)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        self.diagnostics += [s for s in msg.status if s.name == "vla_driver: logger_node"]

    def close(self) -> dict:
        stats = self.logger.stats()
        self.executor.shutdown()
        self.logger.destroy_node()  # closes the segment
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        return stats


def drive(rig: Rig, seconds: float, rgb: np.ndarray, hz: float = 10.0) -> list[float]:
    """Play a small stack at ``hz`` on wall time: camera, odometry, decisions at 2 Hz, plans, commands."""
    from vla_driver.core.types import DecisionResult
    from vla_driver.core.vocabulary import Decision, DecisionVocabulary

    vocab = DecisionVocabulary.preset("alphadrive")
    probs = np.full((len(vocab.speeds), len(vocab.paths)), 0.01)
    probs[0, 0] = 1 - probs.sum() + 0.01
    rig.pubs["navigation"].publish(String(data="Follow the road for 300 m"))
    rig.pubs["takeover"].publish(Bool(data=False))
    stamps, start = [], time.monotonic()
    for k in range(int(seconds * hz)):
        stamp = rig.node.get_clock().now().nanoseconds * 1e-9
        x = SPEED * (stamp - stamps[0]) if stamps else 0.0  # where the car is at that stamp, however late
        rig.pubs["odom"].publish(state_to_odometry(EgoState(SPEED, 0.0, x, 0.0, 0.0, stamp)))
        rig.pubs["image"].publish(rgb_to_image(rgb, stamp))
        if k % int(hz / 2) == 0:
            result = DecisionResult(Decision("KEEP", "STRAIGHT"), probs, -0.01, 12.0, "test-model")
            rig.pubs["decision"].publish(String(data=json.dumps({**result.to_json_dict(vocab), "stamp": stamp})))
        rig.pubs["trajectory"].publish(trajectory_to_path(constant_motion(SPEED, 0.0, stop_trajectory(0.0).spec),
                                                          stamp))
        rig.pubs["cmd_vel"].publish(Twist())
        stamps.append(stamp)
        time.sleep(max(0.0, start + (k + 1) / hz - time.monotonic()))
    return stamps


def test_logger_records_every_role_and_read_samples_reads_the_drive_back(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (48, 96, 3), dtype=np.uint8)
    writer = CountingWriter(tmp_path, min_free_bytes=0, name_prefix="vla_")
    rig = Rig(writer)
    try:
        stamps = drive(rig, 4.5, rgb)
        every_frame = {"/camera/image_raw", "/odom", "/vla/trajectory", "/cmd_vel"}
        assert wait_until(lambda: all(writer.handed[t] >= len(stamps) for t in every_frame)
                          and any(d.level == DiagnosticStatus.OK for d in rig.diagnostics)), dict(writer.handed)
    finally:
        stats = rig.close()
    assert stats["dropped"] == 0 and stats["written"] >= 4 * len(stamps)
    [segment] = list_segments(tmp_path)
    assert segment.state == "complete"
    from rosbags.rosbag2 import Reader

    with Reader(segment.path) as reader:
        recorded = {name: (t.msgtype, t.msgcount) for name, t in reader.topics.items()}
    expected = {ROLES[r][2]: ROLES[r][1] for r in ("image", "odom", "navigation", "decision", "trajectory",
                                                   "cmd_vel", "takeover", "diagnostics")}
    # recorded under the reader's names; /diagnostics holds at least the logger's own status
    assert {k: v[0] for k, v in recorded.items() if v[1]} == expected
    assert recorded["/camera/image_raw"][1] == len(stamps)
    # one sample per decision whose 3 s future the odometry covers (wall-time gaps tolerated on a busy machine)
    samples = read_samples(tmp_path, max_odom_gap_s=1.5, progress=False)
    assert len(samples) >= 2
    s = samples[0]
    # one of the frames sent (float seconds at epoch scale keep ~0.2 us through a message's sec/nanosec)
    assert np.array_equal(s.image, rgb) and min(abs(s.image_stamp - t) for t in stamps) < 1e-6
    assert s.decision.speed == "KEEP" and s.decision.stamp == pytest.approx(s.image_stamp, abs=1e-6)
    assert s.trajectory is not None and s.navigation == "Follow the road for 300 m"
    assert s.speed == pytest.approx(SPEED) and s.future_motion[-1, 0] == pytest.approx(3 * SPEED, rel=0.15)
    assert not s.takeover and s.command == (0.0, 0.0)
    ok = [d for d in rig.diagnostics if d.level == DiagnosticStatus.OK]
    assert ok and {v.key for v in ok[-1].values} >= {"written", "dropped", "mb_per_s", "state"}


def test_callbacks_only_enqueue_even_while_the_writer_thread_is_stuck(tmp_path):
    """A disk check that takes 0.4 s stalls the writer thread; callbacks must not notice."""
    stuck = threading.Event()

    def slow_disk_usage(path):
        stuck.set()
        time.sleep(0.4)
        return type("Usage", (), {"free": 1 << 40})()

    writer = SegmentWriter(tmp_path, min_free_bytes=1, flush_interval_s=0.1, disk_usage=slow_disk_usage)
    rig = Rig(writer, topics=["image", "odom"])
    frame = np.zeros((720, 1280, 3), np.uint8)
    try:
        for k in range(20):
            rig.pubs["image"].publish(rgb_to_image(frame, float(k)))
            rig.pubs["odom"].publish(state_to_odometry(EgoState(1.0, 0.0, 0.0, 0.0, 0.0, float(k))))
            time.sleep(0.02)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(rig.logger.callback_s) < 40:
            time.sleep(0.02)
        assert stuck.is_set()
        queued = writer.stats()["queue_depth"]
    finally:
        stats = rig.close()
    cost_ms = np.array(rig.logger.callback_s) * 1e3
    assert len(cost_ms) == 40 and queued > 0  # everything arrived while the writer was still behind
    assert np.percentile(cost_ms, 99) < 5.0  # a 2.7 MB frame is enqueued, not written, in the callback
    assert stats["dropped"] == 0 and writer.stats()["written"] == 40  # and all of it reached the disk


def test_keep_topic_flags_the_segment_and_a_broken_disk_raises_an_error_diagnostic(tmp_path):
    rig = Rig(output_dir=str(tmp_path / "logs"), min_free_mb=0.0, topics=["odom"])
    keep = rig.node.create_publisher(Empty, "/logger_node/keep", 10)
    try:
        rig.pubs["odom"].publish(state_to_odometry(EgoState(1.0, 0.0, 0.0, 0.0, 0.0, 1.0)))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (rig.logger.writer.current_segment is None
                                               or keep.get_subscription_count() == 0):
            time.sleep(0.02)
        keep.publish(Empty())
        while time.monotonic() < deadline and rig.logger.diagnostics.counters["kept"] == 0:
            time.sleep(0.02)
        segment = rig.logger.writer.current_segment
    finally:
        rig.close()
    assert (segment / KEEP_NAME).exists()

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the log folder should be")
    rig = Rig(output_dir=str(blocker / "logs"), topics=["odom"])
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and not (rig.logger.stats()["dropped"] and any(
                d.level == DiagnosticStatus.ERROR for d in rig.diagnostics)):
            rig.pubs["odom"].publish(state_to_odometry(EgoState(1.0, 0.0, 0.0, 0.0, 0.0, 1.0)))
            time.sleep(0.1)
    finally:
        stats = rig.close()
    errors = [d for d in rig.diagnostics if d.level == DiagnosticStatus.ERROR]
    assert errors and "degraded" in errors[0].message and stats["state"] == "degraded"
    assert stats["dropped"] > 0


def test_config_yaml_declares_exactly_the_node_parameters(tmp_path):
    config = ROOT / "config" / "logger_node.yaml"
    context = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(config)], context=context, domain_id=DOMAIN_ID)
    try:
        plain = Node("logger_node", context=context, automatically_declare_parameters_from_overrides=True)
        bare = Node("no_overrides", context=context)
        from_yaml = {n: plain.get_parameter(n).value for n in set(plain._parameters) - set(bare._parameters)}
        plain.destroy_node()
        bare.destroy_node()
        node = LoggerNode(SegmentWriter(tmp_path), context=context)  # rclpy accepts every value's type
        in_effect = node.params
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    declared = {f.name: f.default for f in fields(LoggerParams)}
    assert set(from_yaml) == set(declared)
    for name, default in declared.items():
        assert from_yaml[name] == (list(default) if isinstance(default, tuple) else default), name
    assert in_effect.topics == list(ROLES)


def test_compressed_camera_is_recorded_under_the_image_name(tmp_path):
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import CompressedImage

    from vla_driver.experience import messages as m

    rig = Rig(output_dir=str(tmp_path), min_free_mb=0.0, topics=["image"], camera_compressed=True,
              image_topic="image/compressed")
    pub = rig.node.create_publisher(CompressedImage, "image/compressed", QoSProfile(depth=10))
    rgb = np.full((32, 48, 3), 200, np.uint8)
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and pub.get_subscription_count() == 0:
            time.sleep(0.02)
        pub.publish(m.compressed_image_message(rgb, 5_000_000_000, fmt="png"))  # CDR bytes, published raw
        while time.monotonic() < deadline and rig.logger.stats()["written"] == 0:
            time.sleep(0.02)
    finally:
        rig.close()
    [segment] = list_segments(tmp_path)
    with AnyReader([segment.path]) as reader:
        [(conn, t_ns, raw)] = list(reader.messages())
        msg = reader.deserialize(raw, conn.msgtype)
    assert (conn.topic, conn.msgtype) == ("/camera/image_raw", "sensor_msgs/msg/CompressedImage")
    assert np.array_equal(m.decode_image(msg), rgb) and msg.header.stamp.sec == 5


def test_a_message_over_max_message_mb_is_dropped_counted_and_named_while_the_rest_is_recorded(tmp_path):
    rig = Rig(output_dir=str(tmp_path), min_free_mb=0.0, topics=["image", "odom"], max_message_mb=0.5)
    try:
        assert wait_until(lambda: rig.pubs["image"].get_subscription_count() > 0
                          and rig.pubs["odom"].get_subscription_count() > 0)
        rig.pubs["image"].publish(rgb_to_image(np.zeros((600, 800, 3), np.uint8), 1.0))  # 1.4 MB
        rig.pubs["image"].publish(rgb_to_image(np.zeros((60, 80, 3), np.uint8), 1.1))
        rig.pubs["odom"].publish(state_to_odometry(EgoState(SPEED, 0.0, 0.0, 0.0, 0.0, 1.1)))
        assert wait_until(lambda: rig.logger.diagnostics.counters["too_large"] == 1
                          and rig.logger.stats()["written"] == 2)
        assert rig.logger.diagnostics.counters["too_large_/camera/image_raw"] == 1
        assert wait_until(lambda: any("1 MiB message on /camera/image_raw dropped: over max_message_mb 0.5"
                                      in s.message for s in rig.diagnostics))
    finally:
        rig.close()
