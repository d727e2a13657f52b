"""The demo's pictures tell the truth: speed, trajectory in the camera, one picture per scenario.
Synthetic frames only: no ROS, no model, no simulator."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vla_driver.core.camera_rig import load_rig
from vla_driver.harness.demo import drive_episodes, frame_dicts
from vla_driver.sim.render import (
    PLAN_COLOR,
    _speed_text,
    annotate,
    display_rig,
    front_camera,
    trajectory_in_camera,
)

CAMERA = display_rig().cameras[0]  # CARLA's rgb_front at 400x300


def _straight(y_end: float = 0.0) -> np.ndarray:
    """Six waypoints 2..12 m ahead, bending to y_end at 12 m (quadratically)."""
    x = np.linspace(2.0, 12.0, 6)
    y = y_end * ((x - 2.0) / 10.0) ** 2
    return np.column_stack([x, y, np.zeros_like(x)])


def _view(t: float, speed: float) -> dict:
    return {"time": t, "speed": speed, "navigation": "Go straight for 100m", "cameras": {},
            "topdown": np.full((128, 256, 3), 90, np.uint8), "front": np.full((300, 400, 3), 120, np.uint8),
            "front_camera": CAMERA, "front_fit": None, "front_caption": "front camera"}


def _run(speeds=(21.5, 22.0, 22.5)) -> SimpleNamespace:
    views = [_view(0.1 * i, v) for i, v in enumerate(speeds)]
    trajectories = [(0.1 * i, _straight(), i == 2) for i in range(len(speeds))]
    decisions = [{"stamp": 0.0, "speed": "KEEP", "path": "STRAIGHT"}, {"stamp": 0.15, "speed": "ACCELERATE",
                                                                       "path": "STRAIGHT"}]
    result = SimpleNamespace(extras={"cycles": len(speeds), "missed_cycles": 0, "cycle_latency_p50_ms": 5.0},
                             driving_score=1.0, route_completion=1.0, infractions={})
    return SimpleNamespace(result=result, frames=[v["topdown"] for v in views], views=views,
                           trajectories=trajectories, decisions=decisions)


def test_frames_carry_the_recorded_speed_time_and_decision():
    frames = frame_dicts(_run())
    assert [f["speed"] for f in frames] == [21.5, 22.0, 22.5]
    assert [f["time"] for f in frames] == pytest.approx([0.0, 0.1, 0.2])
    assert [f["decision"] for f in frames] == ["KEEP, STRAIGHT", "KEEP, STRAIGHT", "ACCELERATE, STRAIGHT FALLBACK"]
    assert frames[1]["image"].shape == (128, 256, 3) and frames[1]["front"].shape == (300, 400, 3)
    assert "22.0 m/s" in _speed_text(frames[1]) and "0.0" not in _speed_text(frames[1])
    # without a recorded speed the picture says it does not know, never 0.0
    assert "?" in _speed_text({"speed": None}) and "0.0" not in _speed_text({})


def test_straight_trajectory_lies_on_the_road_ahead_in_the_lower_half_centre():
    lines, points = trajectory_in_camera(_straight(), CAMERA)
    pixels = np.vstack(lines)
    # the camera (2 m ahead of the car's centre, 2 m up, 90 deg) sees the road from ~4.7 m on:
    # the waypoints at 6..12 m are in view, and the line from the car enters at the bottom edge
    assert len(points) == 4 and pixels[:, 1].max() > CAMERA.height
    assert np.all(pixels[:, 1] >= CAMERA.height / 2)  # on the ground: below the horizon
    assert np.all(np.abs(pixels[:, 0] - CAMERA.width / 2) < 2)  # down the centre column
    assert points[-1][1] < points[0][1]  # farther is higher up
    # the same through a rig's model-size image (letterboxed by its fit)
    rig = load_rig("front")
    cam = front_camera(rig)
    _, small = trajectory_in_camera(_straight(), cam, rig.fit(cam), (rig.model_height, rig.model_width))
    np.testing.assert_allclose(small, points * rig.model_width / CAMERA.width, atol=1e-6)


def test_left_curve_lands_left_of_centre_and_points_behind_are_skipped():
    _, points = trajectory_in_camera(_straight(y_end=4.0), CAMERA)
    assert points[-1][0] < CAMERA.width / 2 - 20 and np.all(np.diff(points[:, 0]) <= 1e-9)
    right = trajectory_in_camera(_straight(y_end=-4.0), CAMERA)[1]
    assert right[-1][0] > CAMERA.width / 2 + 20
    behind = np.array([[-5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # all behind the camera (x 2 m)
    lines, points = trajectory_in_camera(behind, CAMERA)
    assert lines == [] and len(points) == 0


def test_panel_draws_the_trajectory_in_the_front_camera_and_the_top_down_view():
    frame = frame_dicts(_run())[0]
    image = np.asarray(annotate(frame).convert("RGB"))
    red = np.all(image == PLAN_COLOR, axis=-1)
    bar = 44  # text bar above the images
    front = red[bar:bar + 300, :400]
    rows, cols = np.nonzero(front)
    assert rows.size and rows.min() >= 150 and abs(np.median(cols) - 200) < 4
    assert red[bar:, 400:].any()  # and in the top-down view beside it


def test_one_picture_per_scenario_of_its_first_seed(tmp_path):
    driven = []

    def drive(scenario, seed, record):
        driven.append((scenario, seed, record))
        run = _run()
        if not record:
            run.views, run.frames = [], []
        return run

    out = drive_episodes(["highway", "roundabout"], [7, 8], drive, tmp_path)
    assert driven == [("highway", 7, True), ("highway", 8, False), ("roundabout", 7, True), ("roundabout", 8, False)]
    names = sorted(p.name for p in out["pictures"])
    assert names == ["highway_7.gif", "highway_7.png", "roundabout_7.gif", "roundabout_7.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    with Image.open(tmp_path / "highway_7.gif") as gif:
        assert gif.n_frames == 2  # every 2nd of 3 frames
    assert out["cycles"] == 12 and len(out["results"]) == 4


def test_model_size_projection_matches_the_rigs_model_intrinsics_and_the_panel_shows_every_camera():
    rig = load_rig("front3")  # crop: the model image is a scaled window of the native frame
    cam = front_camera(rig)
    ground = np.array([[6.0, 1.0, 0.0], [15.0, -2.0, 0.0], [30.0, 0.5, 0.0]])
    optical = (ground - cam.ego_from_optical()[:3, 3]) @ cam.ego_from_optical()[:3, :3]
    uvw = optical @ rig.model_K(cam).T
    expected = uvw[:, :2] / uvw[:, 2:]
    _, points = trajectory_in_camera(ground, cam, rig.fit(cam), (rig.model_height, rig.model_width))
    np.testing.assert_allclose(points, expected, atol=1e-9)
    view = {**_view(0.0, 8.0), "front": np.full((rig.model_height, rig.model_width, 3), 120, np.uint8),
            "front_camera": cam, "front_fit": rig.fit(cam),
            "cameras": {n: np.zeros((rig.model_height, rig.model_width, 3), np.uint8)
                        for n in rig.names if n != cam.name}}
    run = _run(speeds=(8.0,))
    run.views = [view]
    image = annotate(frame_dicts(run)[0])
    assert image.height > 44 + 300 + rig.model_height  # the other cameras in a strip below
    assert np.all(np.asarray(image.convert("RGB")) == PLAN_COLOR, axis=-1)[44:344, :400].any()
