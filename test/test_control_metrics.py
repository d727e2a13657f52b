"""Controller, label derivation and metric maths (pure numpy, fast)."""
import math

import numpy as np
import pytest

from vla_driver.core.control import PurePursuitPID, reanchor
from vla_driver.core.labels import label_from_future, reasoning_text
from vla_driver.core.metrics import (
    EpisodeResult,
    driving_score,
    format_table,
    infraction_penalty,
    mean_ci95,
    planning_metrics,
    success,
    summarize,
    t_critical_975,
)
from vla_driver.core.trajectory import (
    Trajectory,
    TrajectorySpec,
    constant_motion,
    stop_trajectory,
    world_to_ego,
)
from vla_driver.core.vocabulary import Decision, DecisionVocabulary

SPEC = TrajectorySpec()
ALPHA = DecisionVocabulary.preset("alphadrive")
MIND = DecisionVocabulary.preset("minddrive")


# ----------------------------------------------------------------------------- controller
def test_straight_trajectory_gives_straight_command_at_profile_speed():
    ctrl = PurePursuitPID()
    speed_cmd, yaw_rate = ctrl.command(constant_motion(10.0, 0.0, SPEC), 10.0, 0.1)
    assert abs(yaw_rate) < 1e-9
    assert speed_cmd == pytest.approx(10.0, abs=1e-6)


def test_speed_command_follows_the_profile_direction():
    ctrl = PurePursuitPID()
    faster, _ = ctrl.command(constant_motion(10.0, 0.0, SPEC, accel=2.0), 10.0, 0.1)
    ctrl.reset()
    slower, _ = ctrl.command(stop_trajectory(10.0, SPEC, decel=4.0), 10.0, 0.1)
    assert faster > 10.5 and slower < 9.0


def test_left_curve_commands_left_yaw_rate_and_non_finite_brakes():
    ctrl = PurePursuitPID()
    _, yaw_left = ctrl.command(constant_motion(8.0, 0.3, SPEC), 8.0, 0.1)
    _, yaw_right = ctrl.command(constant_motion(8.0, -0.3, SPEC), 8.0, 0.1)
    assert yaw_left > 0.15 and yaw_right < -0.15
    bad = Trajectory(np.full((6, 3), np.nan), SPEC)
    speed_cmd, yaw = ctrl.command(bad, 10.0, 0.1)
    assert speed_cmd < 10.0 and yaw == 0.0


def _closed_loop_on_circle(radius: float, v_ref: float, seconds: float = 15.0):
    """Unicycle with a first-order speed response following a world circle through the controller."""
    ctrl, dt = PurePursuitPID(), 0.1
    x, y, yaw, v = radius, 0.0, math.pi / 2, v_ref * 0.6  # on the circle (centre origin), counter-clockwise
    errors, speeds = [], []
    for _ in range(int(seconds / dt)):
        phase = math.atan2(y, x)
        arc = phase + v_ref * SPEC.times / radius
        pts = radius * np.column_stack([np.cos(arc), np.sin(arc)])
        local = world_to_ego(pts, (x, y), yaw)
        traj = Trajectory(np.column_stack([local, arc + math.pi / 2 - yaw]), SPEC)
        speed_cmd, yaw_rate = ctrl.command(traj, v, dt)
        v += (speed_cmd - v) / 0.4 * dt
        yaw += yaw_rate * dt
        x += v * math.cos(yaw) * dt
        y += v * math.sin(yaw) * dt
        errors.append(abs(math.hypot(x, y) - radius))
        speeds.append(v)
    return np.array(errors), np.array(speeds)


def test_follows_a_curved_trajectory_closed_loop():
    errors, speeds = _closed_loop_on_circle(radius=30.0, v_ref=10.0)
    assert errors[50:].max() < 0.3  # pure pursuit cuts a curve a little, never more than this
    assert abs(speeds[-20:].mean() - 10.0) < 0.3


def test_reanchor_expresses_the_same_world_points_in_the_new_frame():
    traj = constant_motion(10.0, 0.2, SPEC)
    same = reanchor(traj, (5.0, 2.0, 0.3), (5.0, 2.0, 0.3))
    np.testing.assert_allclose(same.poses, traj.poses, atol=1e-9)
    moved = reanchor(traj, (0.0, 0.0, 0.0), (2.0, 0.0, 0.0))
    np.testing.assert_allclose(moved.poses[:, 0], traj.poses[:, 0] - 2.0, atol=1e-9)


# ----------------------------------------------------------------------------- labels
def _lane_change(v: float, offset: float) -> np.ndarray:
    x = v * SPEC.times
    y = offset * 0.5 * (1 - np.cos(np.pi * np.clip(SPEC.times / SPEC.horizon, 0, 1)))
    heading = np.arctan(np.gradient(y, x))
    heading[-1] = 0.0
    return np.column_stack([x, y, heading])


@pytest.mark.parametrize("future, speed0, speed, path", [
    (constant_motion(10.0, 0.0, SPEC).poses, 10.0, "keep", "straight"),
    (constant_motion(10.0, 0.0, SPEC, accel=1.5).poses, 10.0, "accelerate", "straight"),
    (constant_motion(10.0, 0.0, SPEC, accel=-1.0).poses, 10.0, "decelerate", "straight"),
    (constant_motion(20.0, 0.0, SPEC, accel=-4.0).poses, 20.0, "decelerate_hard", "straight"),
    (stop_trajectory(5.0, SPEC, decel=4.0).poses, 5.0, "stop", "straight"),
    (np.zeros((6, 3)), 0.0, "stop", "straight"),
    (constant_motion(8.0, 0.4, SPEC).poses, 8.0, "keep", "left_turn"),
    (constant_motion(8.0, -0.4, SPEC).poses, 8.0, "keep", "right_turn"),
    (_lane_change(20.0, 3.5), 20.0, "keep", "left_change"),
    (_lane_change(20.0, -3.5), 20.0, "keep", "right_change"),
])
def test_labels_from_synthetic_futures_for_every_class(future, speed0, speed, path):
    mind = label_from_future(future, speed0, MIND, SPEC)
    assert mind == Decision(MIND.find_speed(speed), MIND.find_path(path))
    alpha = label_from_future(future, speed0, ALPHA, SPEC)  # no hard-deceleration word: falls back
    assert alpha == Decision(ALPHA.find_speed(speed), ALPHA.find_path(path))


def test_curved_road_is_not_a_lane_change_and_bad_future_is_rejected():
    gentle = constant_motion(20.0, 0.12, SPEC).poses  # bends 0.36 rad: y ~ 10 m, all explained by the arc
    assert label_from_future(gentle, 20.0, ALPHA).path == "STRAIGHT"
    with pytest.raises(ValueError):
        label_from_future(np.zeros((5, 3)), 1.0, ALPHA)


def test_reasoning_text_names_situation_and_action():
    text = reasoning_text(Decision("DECELERATE", "LEFT_CHANGE"), 23.4, "Follow the road for 400m",
                          "a slower vehicle is 20 m ahead")
    assert "23 m/s" in text and "400m" in text and "slower vehicle" in text
    assert "slow down" in text and "left lane" in text


# ----------------------------------------------------------------------------- closed-loop metrics
def _result(scenario, completion, infractions=None, distance=100.0, jerk=1.0):
    return EpisodeResult(scenario, 0, completion, infractions or {}, distance_m=distance, mean_jerk=jerk)


def test_penalty_driving_score_and_success_by_hand():
    assert infraction_penalty({}) == 1.0
    assert infraction_penalty({"collision": 1, "off_road": 2}) == pytest.approx(0.6 * 0.7 * 0.7)
    assert infraction_penalty({"collision": 0}) == 1.0
    r = _result("highway", 0.5, {"collision": 1})
    assert driving_score(r) == pytest.approx(0.3) and r.driving_score == pytest.approx(0.3)
    assert not success(r)
    assert success(_result("highway", 0.995)) and not success(_result("highway", 0.98))


def test_t_interval_and_summary_by_hand():
    mean, half = mean_ci95([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4)
    assert half == pytest.approx(4.303 * 0.2 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci95([0.5])[1])
    assert t_critical_975(31) == pytest.approx(2.0395, abs=2e-3)
    assert t_critical_975(200) == pytest.approx(1.9719, abs=2e-3)

    results = [_result("merge", 1.0, distance=200.0, jerk=1.0), _result("merge", 0.5, {"collision": 1}, 100.0, 3.0),
               _result("highway", 1.0, {"off_road": 1}, 300.0, 2.0)]
    summary = summarize(results)
    merge, overall = summary["per_scenario"]["merge"], summary["overall"]
    assert merge["driving_score"] == pytest.approx((1.0 + 0.3) / 2)
    assert merge["ds_ci95"] == pytest.approx(12.706 * np.std([1.0, 0.3], ddof=1) / math.sqrt(2))
    assert merge["success_rate"] == 0.5 and merge["collisions_per_km"] == pytest.approx(1 / 0.3)
    assert overall["driving_score"] == pytest.approx((1.0 + 0.3 + 0.7) / 3)
    assert overall["success_rate"] == pytest.approx(1 / 3)
    assert overall["mean_jerk"] == pytest.approx(2.0) and overall["distance_km"] == pytest.approx(0.6)
    table = format_table(summary)
    assert "merge" in table and "highway" in table and "overall" in table


def test_planning_metrics_accuracy_and_f1_by_hand():
    truth = [Decision("KEEP", "STRAIGHT"), Decision("KEEP", "LEFT_CHANGE"), Decision("STOP", "STRAIGHT"),
             Decision("ACCELERATE", "STRAIGHT")]
    pred = [Decision("KEEP", "STRAIGHT"), Decision("KEEP", "STRAIGHT"), Decision("STOP", "STRAIGHT"),
            Decision("KEEP", "STRAIGHT")]
    m = planning_metrics(pred, truth, ALPHA)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["speed_accuracy"] == pytest.approx(0.75) and m["path_accuracy"] == pytest.approx(0.75)
    assert m["f1"]["KEEP"] == pytest.approx(0.8)  # tp 2, fp 1, fn 0
    assert m["f1"]["STOP"] == 1.0 and m["f1"]["ACCELERATE"] == 0.0
    assert m["f1"]["STRAIGHT"] == pytest.approx(6 / 7)  # tp 3, fp 1, fn 0
    assert m["f1"]["LEFT_CHANGE"] == 0.0 and math.isnan(m["f1"]["DECELERATE"])
    assert set(m["f1"]) == set(ALPHA.speeds) | set(ALPHA.paths)
    with pytest.raises(ValueError):
        planning_metrics(pred[:2], truth, ALPHA)
