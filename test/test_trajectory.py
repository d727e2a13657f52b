import numpy as np

from vla_driver.core.trajectory import (
    Trajectory,
    TrajectorySpec,
    constant_motion,
    ego_to_world,
    future_poses_to_ego,
    l2_at,
    stop_trajectory,
    world_to_ego,
)


def test_frames_are_inverse_and_x_is_forward():
    ego_xy, yaw = np.array([10.0, -3.0]), np.pi / 2  # facing world +y
    ahead_world = ego_xy + np.array([0.0, 5.0])
    np.testing.assert_allclose(world_to_ego(ahead_world, ego_xy, yaw), [5.0, 0.0], atol=1e-9)
    left_world = ego_xy + np.array([-2.0, 0.0])
    np.testing.assert_allclose(world_to_ego(left_world, ego_xy, yaw), [0.0, 2.0], atol=1e-9)
    pts = np.random.default_rng(0).normal(size=(7, 2))
    np.testing.assert_allclose(ego_to_world(world_to_ego(pts, ego_xy, yaw), ego_xy, yaw), pts, atol=1e-9)


def test_future_poses_to_ego_headings():
    future = future_poses_to_ego(np.array([[1.0, 1.0]]), np.array([0.5]), [1.0, 0.0], 0.25)
    assert np.isclose(future[0, 2], 0.25)


def test_constant_motion_and_stop():
    spec = TrajectorySpec()
    straight = constant_motion(10.0, 0.0, spec)
    np.testing.assert_allclose(straight.xy[:, 0], 10.0 * spec.times, rtol=1e-6)
    stop = stop_trajectory(10.0, spec, decel=4.0)  # stops after 2.5 s
    assert np.all(np.diff(stop.xy[:, 0]) >= 0) and stop.speeds()[-1] == 0.0
    assert stop.violations(10.0) == []
    left = constant_motion(8.0, 0.3, spec)
    assert left.xy[-1, 1] > 0 and left.poses[-1, 2] > 0  # left is +y, counter-clockwise heading


def test_violations_and_clip():
    spec = TrajectorySpec()
    jump = Trajectory(np.column_stack([spec.times * 40.0, np.zeros(6), np.zeros(6)]), spec)
    assert "max_accel" in jump.violations(5.0)
    clipped = jump.clip_to_limits(5.0)
    assert clipped.violations(5.0) == []
    bad = Trajectory(np.full((6, 3), np.nan), spec)
    assert bad.violations(5.0) == ["non_finite"]
    assert np.all(np.isfinite(bad.clip_to_limits(5.0).poses))


def test_l2_at_horizons():
    spec = TrajectorySpec()
    a = np.zeros((6, 3))
    b = np.zeros((6, 3))
    b[:, 1] = np.arange(6)
    assert l2_at(a, b, spec) == {"l2_1s": 1.0, "l2_2s": 3.0, "l2_3s": 5.0}
