"""Experience logger node: every configured topic -> rosbag2 MCAP segments, without slowing anyone down.

A thin rclpy adapter over :class:`vla_driver.experience.segments.SegmentWriter`. Subscriptions are raw
(``raw=True``): a callback gets the CDR bytes, stamps them with the node clock (sim time under
``use_sim_time``) and enqueues them; no deserialization, no I/O on the executor threads.

Each role is subscribed on ``<role>_topic`` (the stack's names, remappable like the other nodes) and
recorded under the name the experience reader expects (``experience.reader.TopicMap`` defaults, plus
``/diagnostics``), so ``read_samples`` works on any log without a topic map:

    image -> /camera/image_raw, odom -> /odom, navigation -> /navigation, decision -> /vla/decision,
    trajectory -> /vla/trajectory, cmd_vel -> /cmd_vel, takeover -> /vla/takeover,
    events -> /vla/events, diagnostics -> /diagnostics

Camera: ``camera_compressed`` subscribes a ``sensor_msgs/CompressedImage`` topic instead (e.g. an
image_transport ``.../compressed`` topic) and records it under the same image name; the reader decodes
both. ``camera_reliable`` picks the camera QoS: reliable (default; Fast DDS drops most large frames
offered best effort) or best effort, for drivers that only publish best effort.

Publishing a ``std_msgs/Empty`` on ``~/keep`` flags the current segment so the disk quota never
deletes it. Health goes to /diagnostics: written, dropped, MB/s, writer state (degraded -> ERROR).
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry, Path
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Bool, Empty, String

from vla_driver.core.camera_rig import CameraRig, camera_topic, rig_from_param
from vla_driver.experience import messages as m
from vla_driver.experience.reader import TopicMap, recorded_camera_topic
from vla_driver.experience.segments import SegmentWriter
from vla_driver.experience.segments import log as writer_log

from .camera_set import PRESET_CAMERAS
from .diagnostics import ERROR, OK, WARN, NodeDiagnostics
from .params import ParameterValueError, declare_params, param, require_positive
from .spin import spin_standalone

_SCHEMA = TopicMap()
# role -> (rclpy message class, rosbag2 type name, recorded topic name)
ROLES = {
    "image": (Image, m.IMAGE, _SCHEMA.image),
    "odom": (Odometry, m.ODOMETRY, _SCHEMA.odom),
    "navigation": (String, m.STRING, _SCHEMA.navigation),
    "decision": (String, m.STRING, _SCHEMA.decision),
    "trajectory": (Path, m.PATH, _SCHEMA.trajectory),
    "cmd_vel": (Twist, m.TWIST, _SCHEMA.cmd_vel),
    "takeover": (Bool, m.BOOL, _SCHEMA.takeover),
    "events": (String, m.STRING, _SCHEMA.events),
    "diagnostics": (DiagnosticArray, "diagnostic_msgs/msg/DiagnosticArray", "/diagnostics"),
}
MB = 1 << 20
CAMERA_QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)  # a second of frames may queue
# Everything but frames: kept until taken. With a 100-deep history a logger starved of CPU for a few seconds (a
# node restarting next to it: torch loading on both cores) had its oldest odometry overwritten unseen (35 of
# ~900 in the fault suite); Fast DDS bounds KEEP_ALL (5000 samples by default: ~4 minutes of 20 Hz odometry).
SMALL_MESSAGE_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class LoggerParams:
    output_dir: str = param("~/.ros/vla_driver/experience", "folder the segments are written to")
    segment_duration_s: float = param(60.0, "a segment closes before it would span this much message time (s)")
    segment_max_mb: float = param(1024.0, "a segment closes once it holds this much data (MiB)")
    min_free_mb: float = param(2048.0, "free space kept on the disk; oldest unflagged segments are deleted")
    queue_size: int = param(2000, "messages waiting for the writer thread; beyond that they are dropped")
    max_message_mb: float = param(64.0, "a larger message is dropped, counted and named in /diagnostics (MiB)")
    topics: tuple = param(tuple(ROLES), f"roles to record, any of: {', '.join(ROLES)}")
    image_topic: str = param("image", "camera topic subscribed (sensor_msgs/Image, or CompressedImage)")
    camera_compressed: bool = param(False, "the camera topic carries sensor_msgs/CompressedImage")
    camera_reliable: bool = param(True, "reliable camera QoS; false for best-effort-only drivers")
    odom_topic: str = param("odom", "nav_msgs/Odometry topic subscribed")
    navigation_topic: str = param("navigation", "route instruction topic subscribed (std_msgs/String)")
    decision_topic: str = param("decision", "decision JSON topic subscribed (std_msgs/String)")
    trajectory_topic: str = param("trajectory", "planned trajectory topic subscribed (nav_msgs/Path)")
    cmd_vel_topic: str = param("cmd_vel", "controller command topic subscribed (geometry_msgs/Twist)")
    takeover_topic: str = param("/vla/takeover", "human takeover flag subscribed (std_msgs/Bool)")
    events_topic: str = param("/vla/events", "free-text events subscribed (std_msgs/String)")
    diagnostics_topic: str = param("/diagnostics", "diagnostics subscribed (diagnostic_msgs/DiagnosticArray)")
    rig: str = param("front", "camera rig whose cameras are recorded too (camera/<name>/image_raw and camera_info); empty = none")

    POSITIVE = ("segment_duration_s", "segment_max_mb", "queue_size", "max_message_mb")  # > 0; their descriptors carry the range

    def __post_init__(self):
        require_positive(self, *self.POSITIVE)
        if self.min_free_mb < 0:
            raise ParameterValueError(f"parameter min_free_mb must be >= 0, got {self.min_free_mb!r}")
        unknown = sorted(set(self.topics) - set(ROLES))
        if unknown:
            raise ParameterValueError(f"parameter topics names unknown roles {unknown}; known: {', '.join(ROLES)}")

    def subscribed(self, role: str) -> str:
        return getattr(self, f"{role}_topic")


def rig_topics(rig: CameraRig | None) -> list[tuple[str, str, type, str]]:
    """(subscribed topic, recorded name, message class, rosbag2 type) of every camera of ``rig``."""
    out = []
    for name in rig.names if rig is not None else ():
        out.append((camera_topic(name), recorded_camera_topic(name), Image, m.IMAGE))
        out.append((camera_topic(name, "camera_info"), recorded_camera_topic(name, "camera_info"), CameraInfo,
                    "sensor_msgs/msg/CameraInfo"))
    return out


class LoggerNode(Node):
    """``writer`` may be passed in (tests); by default one is made from the parameters."""

    # the rig cameras it may record (launch files remap them like the model nodes')
    TOPICS = tuple(camera_topic(n, stream) for n in PRESET_CAMERAS for stream in ("image_raw", "camera_info"))

    def __init__(self, writer: SegmentWriter | None = None, **node_kwargs):
        super().__init__("logger_node", **node_kwargs)
        p = self.params = declare_params(self, LoggerParams)
        self.writer = writer or SegmentWriter(
            os.path.expanduser(p.output_dir), segment_duration_s=p.segment_duration_s,
            segment_max_bytes=int(p.segment_max_mb * MB), min_free_bytes=int(p.min_free_mb * MB),
            queue_size=p.queue_size, name_prefix="vla_",
        )
        self.callback_s: deque[float] = deque(maxlen=2000)  # time spent in each callback (s)
        self.diagnostics = NodeDiagnostics(self, backend="segment_writer")
        group = ReentrantCallbackGroup()  # callbacks only enqueue: let them run side by side
        self.recording: dict[str, str] = {}  # subscribed topic -> recorded name
        for role in dict.fromkeys(p.topics):
            topic = p.subscribed(role)
            if not topic:
                continue
            msg_cls, msgtype, record_as = ROLES[role]
            qos = SMALL_MESSAGE_QOS
            if role == "image":
                if p.camera_compressed:
                    msg_cls, msgtype = CompressedImage, m.COMPRESSED_IMAGE
                # a second of frames queued: a logger starved for a moment catches up instead of losing them
                qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE if p.camera_reliable
                                 else ReliabilityPolicy.BEST_EFFORT)
            self.writer.add_topic(record_as, msgtype)
            self.create_subscription(msg_cls, topic, self._recorder(record_as), qos, callback_group=group,
                                     raw=True, event_callbacks=self._loss_counter(record_as))
            self.recording[self.resolve_topic_name(topic)] = record_as
        for topic, record_as, msg_cls, msgtype in rig_topics(rig_from_param(p.rig)):
            self.writer.add_topic(record_as, msgtype)
            self.create_subscription(msg_cls, topic, self._recorder(record_as), CAMERA_QOS, callback_group=group,
                                     raw=True, event_callbacks=self._loss_counter(record_as))
            self.recording[self.resolve_topic_name(topic)] = record_as
        self.create_subscription(Empty, "~/keep", self._on_keep, 10)
        self._last = (time.monotonic(), 0)
        self.create_timer(1.0, self._report, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"logging {len(self.recording)} topics to {self.writer.root} "
            f"({', '.join(f'{a} -> {b}' for a, b in self.recording.items())})"
        )
        # the writer's degraded / recovered / quota lines, stamped, in the node's log (last: nothing to undo)
        self._writer_log = _ToRosLog.attach(self.get_logger())

    def _recorder(self, record_as: str):
        writer, clock, timings = self.writer, self.get_clock(), self.callback_s
        limit = int(self.params.max_message_mb * MB)

        def record(data: bytes) -> None:
            start = time.perf_counter()
            if len(data) > limit:  # a broken driver's 8000x8000 frame (192 MB): neither queued nor written
                self._too_large(record_as, len(data))
                return
            writer.write(record_as, clock.now().nanoseconds, data)
            timings.append(time.perf_counter() - start)

        return record

    def _too_large(self, record_as: str, size: int) -> None:
        self.diagnostics.count(f"too_large_{record_as}")
        self.diagnostics.count("too_large")
        self.diagnostics.set_status(WARN, f"a {size / MB:.0f} MiB message on {record_as} dropped: over max_message_mb "
                                          f"{self.params.max_message_mb:g}")

    def _loss_counter(self, record_as: str) -> SubscriptionEventCallbacks:
        """Messages the middleware reports lost before they reached the logger (a publisher's history
        overwrote them before this reader had them): counted per topic and named in /diagnostics."""
        def lost(info) -> None:
            self.diagnostics.count(f"lost_{record_as}", info.total_count_change)
            self.diagnostics.count("lost", info.total_count_change)
            self.diagnostics.set_status(WARN, f"{info.total_count_change} message(s) on {record_as} lost before "
                                              f"reaching the logger ({info.total_count} in total)")

        return SubscriptionEventCallbacks(message_lost=lost)

    def _on_keep(self, _msg: Empty) -> None:
        if self.writer.flag_keep():
            segment = self.writer.current_segment
            self.get_logger().info(f"segment {segment.name if segment else '(next)'} flagged KEEP")
            self.diagnostics.count("kept")

    def stats(self) -> dict:
        """Writer figures plus the callback cost (what the executor threads pay per message)."""
        stats = self.writer.stats()
        cost = np.array(self.callback_s) * 1e6
        stats.update(callback_us_p50=float(np.percentile(cost, 50)) if cost.size else None,
                     callback_us_p99=float(np.percentile(cost, 99)) if cost.size else None)
        return stats

    def _report(self) -> None:
        stats = self.stats()
        now, last_bytes = time.monotonic(), self._last[1]
        mb_per_s = (stats["bytes"] - last_bytes) / max(now - self._last[0], 1e-6) / 1e6
        dropped_before = int(self.diagnostics.values.get("dropped", "0"))
        self._last = (now, stats["bytes"])
        self.diagnostics.values.update({
            "state": stats["state"], "written": str(stats["written"]), "dropped": str(stats["dropped"]),
            "dropped_queue_full": str(stats["dropped_queue_full"]), "mb_per_s": f"{mb_per_s:.2f}",
            "queue_depth": str(stats["queue_depth"]), "segment": stats["current_segment"] or "",
            "callback_us_p99": "n/a" if stats["callback_us_p99"] is None else f"{stats['callback_us_p99']:.1f}",
        })
        if stats["state"] == "degraded":
            self.diagnostics.set_status(ERROR, f"logging degraded, messages dropped: {stats['last_error']}")
        elif stats["dropped"] > dropped_before:
            self.diagnostics.set_status(WARN, f"{stats['dropped'] - dropped_before} messages dropped "
                                              f"(queue full: {stats['dropped_queue_full']} in total)")
        else:
            self.diagnostics.set_status(OK, f"{mb_per_s:.1f} MB/s to {stats['current_segment'] or self.writer.root}")

    def destroy_node(self):
        """Close the segment cleanly (summary, metadata.yaml, lock released) before going away."""
        stats = self.writer.close()
        self.get_logger().info(f"logger closed: {stats['written']} written, {stats['dropped']} dropped, "
                               f"{stats['segments_closed']} segments")
        self._writer_log.detach()
        return super().destroy_node()


class _ToRosLog(logging.Handler):
    """The segment writer's Python log lines into the node's ROS log (console, file, /rosout)."""

    def __init__(self, ros_logger):
        super().__init__(logging.INFO)
        self.ros_logger = ros_logger
        self._before = (writer_log.level, writer_log.propagate)

    @classmethod
    def attach(cls, ros_logger) -> _ToRosLog:
        handler = cls(ros_logger)
        writer_log.addHandler(handler)
        writer_log.setLevel(logging.INFO)
        writer_log.propagate = False  # once, in the ROS log, not twice on stderr
        return handler

    def detach(self) -> None:
        writer_log.removeHandler(self)
        writer_log.setLevel(self._before[0])
        writer_log.propagate = self._before[1]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += f": {record.exc_info[1]!r}"
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            else:
                self.ros_logger.info(text)
        except Exception:  # noqa: BLE001 - logging must never break the writer thread
            self.handleError(record)


def main(args=None) -> None:
    spin_standalone(LoggerNode, args)


if __name__ == "__main__":
    main()
