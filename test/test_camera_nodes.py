"""The model nodes with a camera rig: one synchronised set per instant, a camera that stops or sends another
resolution is named, and the action node falls back and recovers as for a missing image."""
import threading
import time

import numpy as np
import pytest
import rclpy
import test_nodes
from conftest import wait_until
from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from test_nodes import action_node, is_stop, planned

from vla_driver.core.camera_rig import fit_to_model, load_rig
from vla_driver.experience.reader import TopicMap, read_samples
from vla_driver.nodes.camera_set import CameraSet, camera_topic
from vla_driver.nodes.convert import BadMessage, EgoState, rgb_to_image, seconds_to_stamp, state_to_odometry
from vla_driver.nodes.executor import MultiThreadedExecutor
from vla_driver.nodes.logger_node import LoggerNode
from vla_driver.nodes.spin import stop_executor

pytestmark = pytest.mark.usefixtures("node_threads")
harness = test_nodes.harness  # the same fixture: drivers and listeners on a Context of their own
RIG = load_rig("front3")


def frame(h: int, w: int, stamp: float, seed: int = 0):
    return rgb_to_image(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8), stamp)


def test_a_set_forms_only_when_every_camera_is_within_the_slop_and_a_late_camera_is_named():
    cams = CameraSet(RIG, slop_s=0.05)
    h, w = RIG.model_height, RIG.model_width
    cams.on_frame("front", frame(h, w, 10.00))
    cams.on_frame("front_left", frame(h, w, 10.01))
    assert cams.synced is None  # front_right has sent nothing yet
    cams.on_frame("front_right", frame(h, w, 10.02))
    image, stamp = cams.synced
    assert image.shape == (3, h, w, 3) and stamp == pytest.approx(10.02)
    cams.on_frame("front", frame(h, w, 10.30))
    cams.on_frame("front_right", frame(h, w, 10.31))
    assert cams.synced[1] == pytest.approx(10.02)  # front_left is 0.3 s behind: no new set
    assert cams.lagging() == ["camera_front_left"]
    assert cams.ages(10.5)["camera_front_left"] == pytest.approx(0.49)


def test_native_and_model_size_frames_make_the_same_set_as_the_model_encoder_would():
    """A native frame is held at the model's size as it arrives: exactly what ``fit_to_model`` makes of
    the decoded frame, so the nodes, replay and training see the same pixels."""
    native = RIG.camera("front")
    big = {n: frame(native.height, native.width, 5.0, seed=i) for i, n in enumerate(RIG.names)}
    cams = CameraSet(RIG)
    for name, msg in big.items():
        cams.on_frame(name, msg)
    image, _ = cams.synced
    assert image.shape == (3, RIG.model_height, RIG.model_width, 3)
    for i, name in enumerate(RIG.names):
        decoded = np.frombuffer(big[name].data, np.uint8).reshape(native.height, native.width, 3)
        np.testing.assert_array_equal(image[i], fit_to_model(decoded, RIG))
    assert (image[0] != image[1]).any()  # each camera's own frame, in the rig's order


def test_frames_stamped_in_the_future_twice_or_backwards_are_refused_naming_the_time_fault():
    cams = CameraSet(None)  # one camera: the stamp rules are per camera, rig or not
    h, w = 128, 256
    with pytest.raises(BadMessage, match=r"stamp_in_future: camera image frame stamped 3600.000 s ahead"):
        cams.on_frame("image", frame(h, w, 3610.0), now=10.0)  # a camera clock an hour ahead
    assert cams.synced is None
    cams.on_frame("image", frame(h, w, 10.0), now=10.0)
    with pytest.raises(BadMessage, match="duplicate_stamp"):
        cams.on_frame("image", frame(h, w, 10.0, seed=1), now=10.1)
    with pytest.raises(BadMessage, match="stamp_backwards: .* older than its last one at 10.000 s"):
        cams.on_frame("image", frame(h, w, 9.0, seed=1), now=10.1)
    assert cams.synced[1] == 9.0 and cams.ages(10.6)["image"] == pytest.approx(1.6)  # as old as it is: stale
    cams.on_frame("image", frame(h, w, 9.1, seed=1), now=10.2)  # the camera's new timeline goes on
    cams.on_frame("image", frame(h, w, 1.0, seed=2), now=1.0)  # the clock went back too: a reset, start over
    assert cams.synced[1] == 1.0
    cams.on_frame("image", frame(h, w, 5.0, seed=2), now=0.0)  # sim time before the first /clock: not checked
    assert cams.synced[1] == 5.0


def test_a_camera_at_another_resolution_is_refused_with_the_reason():
    cams = CameraSet(RIG)
    native = RIG.camera("front")
    cams.on_frame("front", frame(native.height, native.width, 1.0))  # native size: accepted
    with pytest.raises(BadMessage, match=r"camera front sends 640x480; the front3 rig has 1600x900"):
        cams.on_frame("front", frame(480, 640, 1.1))


def test_three_cameras_through_rclpy_one_stops_fallback_names_it_and_driving_recovers(harness, front3_policy):
    pubs = {n: harness.node.create_publisher(Image, camera_topic(n), 5) for n in RIG.names}
    silent: set[str] = set()

    def cameras(stamp: float) -> None:
        for n, pub in pubs.items():
            if n not in silent:
                pub.publish(frame(RIG.model_height, RIG.model_width, stamp, seed=len(n)))

    action = action_node(harness, front3_policy)
    assert harness.drive_until(lambda: planned(harness.trajectories()), image=False, also=cameras)
    start, t_stop = len(harness.messages("trajectory")), time.monotonic()
    silent.add("front_left")
    assert harness.drive_until(lambda: any(is_stop(t) for t, _ in harness.trajectories(start)), image=False,
                               also=cameras)
    assert harness.drive_until(lambda: any(s.level == DiagnosticStatus.ERROR and "camera_front_left" in s.message
                                           for s in harness.diagnostics("action_node", since=t_stop)),
                               image=False, also=cameras)
    assert action.diagnostics.counters["fallback_stale_input"] > 0
    silent.clear()
    back = len(harness.messages("trajectory"))
    assert harness.drive_until(lambda: planned(harness.trajectories(back)), image=False, also=cameras)

    t_bad = time.monotonic()
    pubs["front"].publish(frame(480, 640, harness.now()))

    def rejected() -> list[str]:
        return [kv.value for s in harness.diagnostics("action_node", since=t_bad) for kv in s.values
                if kv.key == "last_rejected"]

    assert harness.drive_until(lambda: any("camera_front: wrong_resolution" in v for v in rejected()), image=False)


def test_the_logger_records_every_camera_of_a_rig_and_the_drive_reads_back_as_camera_sets(tmp_path):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=test_nodes.DOMAIN_ID)
    logger = LoggerNode(context=context, parameter_overrides=[
        Parameter("output_dir", value=str(tmp_path)), Parameter("min_free_mb", value=0.0),
        Parameter("topics", value=["odom"]), Parameter("rig", value="front3")])
    node = Node("cameras", context=context)
    images = {n: node.create_publisher(Image, camera_topic(n), 20) for n in RIG.names}
    infos = {n: node.create_publisher(CameraInfo, f"camera/{n}/camera_info", 20) for n in RIG.names}
    odom = node.create_publisher(Odometry, "odom", 20)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    for n in (logger, node):
        executor.add_node(n)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert wait_until(lambda: all(p.get_subscription_count() for p in (*images.values(), odom)))
        for k in range(45):  # 4.5 s at 10 Hz: samples with 3 s of odometry ahead
            stamp = node.get_clock().now().nanoseconds * 1e-9
            odom.publish(state_to_odometry(EgoState(8.0, 0.0, 0.8 * k, 0.0, 0.0, stamp)))
            for n in RIG.names:
                images[n].publish(frame(RIG.model_height, RIG.model_width, stamp, seed=k))
                info = CameraInfo(width=RIG.model_width, height=RIG.model_height)
                info.header.stamp = seconds_to_stamp(stamp)
                infos[n].publish(info)
            time.sleep(0.1)
        assert wait_until(lambda: logger.writer.stats()["written"] >= 45 * 7)
    finally:
        stop_executor(executor)
        logger.destroy_node()
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert {f"/camera/{n}/{t}" for n in RIG.names for t in ("image_raw", "camera_info")} <= set(
        logger.recording.values())
    samples = read_samples(tmp_path, TopicMap.for_cameras(RIG.names), progress=False)
    assert samples and all(s.image.shape == (3, RIG.model_height, RIG.model_width, 3) for s in samples)


def test_a_rig_that_is_no_preset_reaches_a_node_as_its_parameter_without_a_file():
    from dataclasses import replace

    from vla_driver.core.camera_rig import rig_from_param, rig_param

    assert rig_param(RIG) == "front3" and rig_from_param("front3") == RIG and rig_from_param("") is None
    custom = replace(RIG, name="my_rig", model_width=RIG.model_width // 2)
    assert rig_param(custom).startswith("{") and rig_from_param(rig_param(custom)) == custom


def test_cameras_that_send_but_never_form_a_set_make_the_set_stale():
    """Every camera fresh, no two frames within the slop: the model has no input, and the nodes' input ages
    say so (they fell through to a crash on the missing set before)."""
    cams = CameraSet(RIG, slop_s=0.05)
    h, w = RIG.model_height, RIG.model_width
    for k, name in enumerate(RIG.names):
        cams.on_frame(name, frame(h, w, 10.0 + 0.1 * k))  # each 0.1 s after the last
    ages = cams.ages(10.25)
    assert cams.synced is None and ages["camera_set"] is None
    assert all(ages[cams.key(n)] is not None and ages[cams.key(n)] <= 0.25 for n in RIG.names)
    for name in RIG.names:
        cams.on_frame(name, frame(h, w, 10.3))
    assert cams.ages(10.4)["camera_set"] == pytest.approx(0.1)
