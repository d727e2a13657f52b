"""A simulator drive logged as an experience bag, the way the logger node would, without ROS: sample data
for replay, the gate's replay set and the open-loop benchmark."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from ..core.camera_rig import CameraRig, camera_topic, load_rig
from ..core.control import PurePursuitPID
from ..core.types import CAMERA_SIZE
from ..experience import messages as m
from ..experience.reader import TopicMap
from ..experience.segments import SegmentWriter
from ..runtime.loading import load_policy
from ..sim.expert import ExpertPolicy
from ..sim.highway import DrivingSim


def record_sim(out_dir, scenario: str = "highway", seconds: float = 20.0, policy: str = "expert", seed: int = 0,
               backend: str = "torch", image_size=CAMERA_SIZE, decision_hz: float = 2.0,
               start_ns: int | None = None, progress: bool = True, rig: CameraRig | None = None) -> Path:
    """Drive one episode and log it as one bag segment under ``out_dir``; returns the segment directory.

    Per 10 Hz simulator step: odometry, the camera frame, navigation when it changes, a plan and the
    controller's command; a decision every ``1 / decision_hz`` s; the takeover flag (False) once a second.
    Header stamps equal log times (``start_ns`` + sim time); outputs are logged 1-3 ms after their frame.
    The cameras are a checkpoint's own, or ``rig`` for the expert (none: the top-down view), one topic each.
    """
    driver = None if policy == "expert" else load_policy(policy, backend)
    rig = driver.rig if driver is not None else rig
    sim = DrivingSim(scenario, seed, image_size=image_size, duration_s=seconds, rig=rig)
    driver = driver or ExpertPolicy(sim)
    controller, names = PurePursuitPID(), TopicMap.for_cameras(rig.names if rig is not None else None)
    cameras = [names.image, *names.more_cameras]
    writer = SegmentWriter(out_dir, segment_duration_s=seconds + 60.0, min_free_bytes=64 << 20,
                           name_prefix=f"sim_{scenario}_")
    for topic in names.more_cameras:
        writer.add_topic(topic, m.IMAGE)
    for role, msgtype in (("image", m.IMAGE), ("odom", m.ODOMETRY), ("navigation", m.STRING),
                          ("decision", m.STRING), ("trajectory", m.PATH), ("cmd_vel", m.TWIST), ("takeover", m.BOOL)):
        writer.add_topic(getattr(names, role), msgtype)
    base = start_ns if start_ns is not None else time.time_ns() // 1_000_000 * 1_000_000
    every = max(1, round(sim.control_hz / decision_hz))
    step, decision, navigation = 0, None, None
    bar = tqdm(total=round(sim.duration_s * sim.control_hz), unit="step", desc=f"record {scenario}",
               disable=not progress, leave=False)
    with _recording(sim, writer, bar):
        while not sim.done:
            t = base + round(sim.time * 1e9)
            obs = sim.observation()
            x, y, yaw, speed = sim.ego_pose()
            writer.write(names.odom, t, m.odometry_message(t, x, y, yaw, speed, obs.yaw_rate, frame_id="map"))
            if obs.navigation != navigation:  # before the frame it goes with, so a replay decides on it
                navigation = obs.navigation
                writer.write(names.navigation, t, m.string_message(navigation))
            for topic, image in zip(cameras, obs.image if rig is not None else [obs.image], strict=True):
                writer.write(topic, t, m.image_message(image, t))
            if step % 10 == 0:
                writer.write(names.takeover, t, m.bool_message(False))
            if step % every == 0:
                result = driver.decide(obs)
                decision = result.decision
                writer.write(names.decision, t + 1_000_000, m.decision_message(result, driver.vocab, t / 1e9))
            traj = driver.plan(obs, decision)
            writer.write(names.trajectory, t + 2_000_000, m.path_message(traj, t))
            command = controller.command(traj, speed, sim.dt)
            writer.write(names.cmd_vel, t + 3_000_000, m.twist_message(*command))
            sim.step(*command)
            step += 1
            bar.update()
    return Path(out_dir) / f"{writer.route}--0"


# The CARLA-ROS bridge's names for the ego's front camera and odometry
CARLA_FRONT_CAMERA = "/carla/ego_vehicle/rgb_front/image"
CARLA_ODOMETRY = "/carla/ego_vehicle/odometry"
CARLA_REMAPS = {CARLA_FRONT_CAMERA: "/" + camera_topic("front"), CARLA_ODOMETRY: "/odom"}  # for replay --remap


def record_carla_like(out_dir, seconds: float = 10.0, scenario: str = "highway", seed: int = 0,
                      traffic: bool = False, camera_hz: float = 20.0, start_ns: int | None = None,
                      progress: bool = True) -> Path:
    """A drive logged as the CARLA-ROS bridge publishes it: the ``front`` rig's camera (CARLA's ``rgb_front``:
    800x600, 90 degrees) at its native size in bgra8 and odometry, both at ``camera_hz``, under the bridge's
    topic names (``CARLA_REMAPS`` renames them for replay); the expert drives. Without ``traffic`` the ego has
    the road to itself (on ``highway``: a straight multi-lane road ahead)."""
    rig = load_rig("front")
    sim = DrivingSim(scenario, seed, duration_s=seconds, control_hz=camera_hz, rig=rig)
    if not traffic:
        sim.remove_traffic()
    expert, controller = ExpertPolicy(sim), PurePursuitPID()
    writer = SegmentWriter(out_dir, segment_duration_s=seconds + 60.0, min_free_bytes=64 << 20,
                           name_prefix=f"carla_like_{scenario}_")
    writer.add_topic(CARLA_FRONT_CAMERA, m.IMAGE)
    writer.add_topic(CARLA_ODOMETRY, m.ODOMETRY)
    base = start_ns if start_ns is not None else time.time_ns() // 1_000_000 * 1_000_000
    every, step, decision = max(1, round(camera_hz / 2.0)), 0, None
    bar = tqdm(total=round(sim.duration_s * camera_hz), unit="frame", desc="record carla-like", disable=not progress,
               leave=False)
    with _recording(sim, writer, bar):
        while not sim.done:
            t = base + round(sim.time * 1e9)
            x, y, yaw, speed = sim.ego_pose()
            obs = sim.observation(render=False)  # the expert reads the scene, not the camera
            writer.write(CARLA_ODOMETRY, t, m.odometry_message(t, x, y, yaw, speed, obs.yaw_rate, frame_id="map",
                                                             child_frame_id="ego_vehicle"))
            frame = sim.cameras().render(sim.env.road, sim.vehicle)["front"]
            writer.write(CARLA_FRONT_CAMERA, t, m.image_message(frame, t, "ego_vehicle/rgb_front", encoding="bgra8"))
            if step % every == 0:
                decision = expert.decide(obs).decision
            sim.step(*controller.command(expert.plan(obs, decision), speed, sim.dt))
            step += 1
            bar.update()
    return Path(out_dir) / f"{writer.route}--0"


@contextmanager
def _recording(sim: DrivingSim, writer: SegmentWriter, bar):
    """Closes the progress bar, the writer and the simulator however the drive ends; a drive the writer
    dropped messages of raises."""
    try:
        yield
    finally:
        bar.close()
        stats = writer.close()
        sim.close()
    if stats["dropped"]:
        raise RuntimeError(f"the experience writer dropped {stats['dropped']} messages: {stats['last_error']}")
