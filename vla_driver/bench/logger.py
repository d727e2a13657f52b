"""``vla-driver bench logger``: the logger node, in its own process as ``ros2 run`` starts it, recording a camera
and odometry over real rclpy pub/sub while the simulator driver runs; counts what it loses."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from ..experience.bag_open import open_bags
from ..experience.messages import image_message, odometry_message
from ..experience.reader import find_bags
from ..sim.expert import ExpertPolicy
from ..sim.highway import DrivingSim


@dataclass
class _Stream:
    publisher: object
    payload: bytearray  # CDR bytes; the header stamp is patched per message
    period: float
    topic: str
    published: int = 0


class _Sensors:
    """Camera and odometry drivers: pre-serialized messages, re-stamped and published on a schedule."""

    def __init__(self, node, width: int, height: int, camera_hz: float, odom_hz: float):


        frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        self.node = node
        self.streams = [
            _Stream(node.create_publisher(Image, "/bench/camera", QoSProfile(depth=20)),
                    bytearray(image_message(frame, 0)), 1.0 / camera_hz, "/bench/camera"),
            _Stream(node.create_publisher(Odometry, "/bench/odom", QoSProfile(depth=100)),
                    bytearray(odometry_message(0, 0.0, 0.0, 0.0, 10.0)), 1.0 / odom_hz, "/bench/odom"),
        ]

    def subscribed(self) -> bool:
        return all(s.publisher.get_subscription_count() > 0 for s in self.streams)

    def run(self, seconds: float) -> float:
        """Publish every stream at its rate for ``seconds``; returns the wall time it took."""

        start = time.monotonic()
        due = [start] * len(self.streams)
        while True:
            i = min(range(len(due)), key=due.__getitem__)
            if due[i] - start >= seconds:
                return time.monotonic() - start
            time.sleep(max(0.0, due[i] - time.monotonic()))
            stream = self.streams[i]
            stamp = self.node.get_clock().now().nanoseconds
            struct.pack_into("<iI", stream.payload, 4, stamp // 1_000_000_000, stamp % 1_000_000_000)
            stream.publisher.publish(bytes(stream.payload))
            stream.published += 1
            due[i] += stream.period

    def counts(self) -> dict:
        return {s.topic: s.published for s in self.streams}

    def message_bytes(self) -> dict:
        return {s.topic: len(s.payload) for s in self.streams}


def _drive(stop, counts: dict) -> None:
    """The in-process closed loop at real time: the simulator's expert drives, the camera is rendered."""


    sim = DrivingSim("highway", seed=0)
    expert, seed, due = ExpertPolicy(sim), 0, time.monotonic()
    while not stop.is_set():
        if sim.done:
            seed += 1
            sim.reset(seed)
            expert.attach(sim)
        sim.observation()
        sim.step(*expert.act())
        counts["driver_steps"] = counts.get("driver_steps", 0) + 1
        due += sim.dt
        time.sleep(max(0.0, due - time.monotonic()))
    sim.close()


def _count_stamped(root, window: tuple[int, int]) -> dict:
    """Messages per recorded topic whose header stamp lies in ``window`` (ns), read from the raw CDR."""



    counts: dict[str, int] = {}
    with open_bags(find_bags(root)) as reader:
        for conn, _t, raw in reader.messages():
            sec, nanosec = struct.unpack_from("<iI", raw, 4)
            if window[0] <= sec * 1_000_000_000 + nanosec <= window[1]:
                counts[conn.topic] = counts.get(conn.topic, 0) + 1
    return counts


def run(args) -> int:
    """Sensors + driver alone, then with the logger node in its own process (as ``ros2 run`` starts it)."""

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = rclpy.Context()
    rclpy.init(args=[], context=context, domain_id=args.domain_id)
    node = Node("bench_sensors", context=context)
    sensors = _Sensors(node, args.width, args.height, args.camera_hz, args.odom_hz)
    logger_status: dict = {}
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda msg: logger_status.update(
        {v.key: v.value for s in msg.status if s.name == "vla_driver: logger_node" for v in s.values}), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    stop, counts = threading.Event(), {}
    driver = threading.Thread(target=_drive, args=(stop, counts), daemon=True)
    driver.start()
    me = psutil.Process()
    tmp = tempfile.mkdtemp(prefix="bench_logger_")
    child = None
    try:
        while driver.is_alive() and not counts.get("driver_steps"):  # the simulator has started
            time.sleep(0.05)
        print(f"baseline: driver + {args.width}x{args.height} camera at {args.camera_hz:g} Hz + odometry at "
              f"{args.odom_hz:g} Hz for {args.baseline_seconds:g} s, no logger")
        cpu0 = sum(me.cpu_times()[:2])
        base_wall = sensors.run(args.baseline_seconds)
        baseline = (sum(me.cpu_times()[:2]) - cpu0) / base_wall
        child = subprocess.Popen(
            [sys.executable, "-m", "vla_driver.nodes.logger_node", "--ros-args",
             "-p", f"output_dir:={tmp}", "-p", "min_free_mb:=0.0", "-p", "topics:=[image,odom]",
             "-p", "image_topic:=/bench/camera", "-p", "odom_topic:=/bench/odom"],
            env={**os.environ, "ROS_DOMAIN_ID": str(args.domain_id)})
        deadline = time.monotonic() + 60.0
        while not sensors.subscribed():
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("the logger node did not subscribe within 60 s")
            time.sleep(0.05)
        sensors.run(1.0)  # warm-up: both sides of every connection have matched before the window opens
        before = sensors.counts()
        logger = psutil.Process(child.pid)
        print(f"logging for {args.seconds:g} s with the logger node (pid {child.pid})")
        cpu0, log_cpu0 = sum(me.cpu_times()[:2]), sum(logger.cpu_times()[:2])
        window = (node.get_clock().now().nanoseconds, 0)
        wall = sensors.run(args.seconds)
        window = (window[0], node.get_clock().now().nanoseconds)
        time.sleep(1.5)  # let the last messages land and one more diagnostics period pass
        wall_all = wall + 1.5
        with_logger = (sum(me.cpu_times()[:2]) - cpu0) / wall_all
        logger_cpu = (sum(logger.cpu_times()[:2]) - log_cpu0) / wall_all
        published = {k: v - before[k] for k, v in sensors.counts().items()}
        sensors.run(0.5)  # a tail after the window, so late deliveries inside it are not cut off
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
        recorded = _count_stamped(tmp, window)
    finally:
        stop.set()
        if child is not None and child.poll() is None:
            child.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        driver.join(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)
    sizes = sensors.message_bytes()
    record_as = {"/bench/camera": "/camera/image_raw", "/bench/odom": "/odom"}
    got = {topic: recorded.get(record_as[topic], 0) for topic in published}
    lost = sum(published[t] - got[t] for t in published)
    mb_per_s = sum(got[t] * sizes[t] for t in published) / wall / 1e6
    result = {
        "bench": "logger", "dropped": lost + int(logger_status.get("dropped", 0)), "mb_per_s": round(mb_per_s, 1),
        "cpu_percent": round(100 * logger_cpu, 1),
        "driver_process_cpu_percent": {"without_logger": round(100 * baseline, 1),
                                       "with_logger": round(100 * with_logger, 1)},
        "published": published, "recorded": got,
        "writer_dropped": int(logger_status.get("dropped", 0)),
        "callback_us_p99": logger_status.get("callback_us_p99"), "seconds": round(wall, 1),
        "camera": f"{args.width}x{args.height} rgb8 @ {args.camera_hz:g} Hz", "odom_hz": args.odom_hz,
        "driver_steps": counts.get("driver_steps", 0),
    }
    print(f"published {published}, recorded {got}: {result['dropped']} dropped; {result['mb_per_s']} MB/s")
    print(f"CPU (% of one core): logger process {result['cpu_percent']}; driver + sensors process "
          f"{result['driver_process_cpu_percent']['without_logger']} without the logger, "
          f"{result['driver_process_cpu_percent']['with_logger']} with it")
    print(json.dumps(result))
    return 0
