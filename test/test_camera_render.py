"""Perspective cameras: rig geometry, resizing for the model, and the TinyPanda renderer of the simulator."""
import hashlib
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from vla_driver.core.camera_rig import CameraRig, CameraSpec, fit_to_model, load_rig, pinhole_project
from vla_driver.sim.camera_render import VEHICLE_HEIGHT_M, Appearance, CameraRenderer
from vla_driver.sim.highway import DrivingSim

MARKER = (255, 0, 255)  # no road, verge or sky colour comes near it
FLAT = Appearance(vehicle_colors=(MARKER,), ambient=1.0)  # unlit: every face exactly MARKER
SMALL_FRONT = CameraSpec("front", 160, 120, 90.0, x=2.0, z=2.0)  # the front preset at a fifth of the size


def small_rig(*cameras, resize="letterbox"):
    return CameraRig("test", tuple(cameras), 96, 128, resize)


@pytest.fixture()
def scene():
    """Highway seed 0 with all traffic removed but one car (the marker) that tests place by hand."""
    sim = DrivingSim("highway", seed=0)
    road, ego = sim.env.road, sim.vehicle
    marker = next(v for v in road.vehicles if v is not ego)
    road.vehicles[:] = [ego, marker]
    yield road, ego, marker
    sim.close()


def place(ego, obj, forward: float, left: float, heading: float = 0.0) -> None:
    """Put ``obj`` at (forward, left) metres in the ego frame; highway-env's y points right."""
    yaw = -ego.heading  # right-handed world
    wx = ego.position[0] + math.cos(yaw) * forward - math.sin(yaw) * left
    wy = -ego.position[1] + math.sin(yaw) * forward + math.cos(yaw) * left
    obj.position = np.array([wx, -wy])
    obj.heading = ego.heading + heading


def marker_mask(image, tol=40):
    return np.all(np.abs(image.astype(int) - MARKER) < tol, axis=2)


def digest(frames):
    return hashlib.sha256(b"".join(frames[k].tobytes() for k in sorted(frames))).hexdigest()


def test_rig_presets_round_trip_and_validate():
    for name in ("front", "front3", "surround6"):
        rig = load_rig(name)
        assert CameraRig.from_dict(json.loads(json.dumps(rig.to_dict()))) == rig
    front = load_rig("front").camera("front")
    assert (front.width, front.height, front.hfov_deg, front.x, front.z) == (800, 600, 90.0, 2.0, 2.0)
    np.testing.assert_allclose(front.K, [[400, 0, 400], [0, 400, 300], [0, 0, 1]])
    assert front.camera_info()["p"][:4] == pytest.approx([400.0, 0.0, 400.0, 0.0])
    assert load_rig("front3").names == ("front_left", "front", "front_right")
    with pytest.raises(ValueError):
        CameraSpec("Front", 800, 600, 90.0)
    with pytest.raises(ValueError):
        CameraSpec("front", 8, 600, 90.0)
    with pytest.raises(ValueError):
        CameraSpec("front", 800, 600, 175.0)
    with pytest.raises(ValueError):
        small_rig(SMALL_FRONT, resize="stretch")


def test_project_follows_the_mount():
    cam = CameraSpec("c", 800, 600, 90.0, x=2.0, z=2.0)
    px, front = cam.project(np.array([[22.0, 0.0, 2.0], [22.0, -1.0, 0.0], [0.0, 0.0, 2.0]]))
    np.testing.assert_allclose(px[:2], [[400, 300], [420, 340]])  # right of centre and below the horizon
    assert front.tolist() == [True, True, False]
    left = CameraSpec("c", 800, 600, 90.0, yaw_deg=90.0)
    np.testing.assert_allclose(left.project(np.array([[0.0, 10.0, 1.5]]))[0], [[400, 300]])


def test_fit_to_model_keeps_the_aspect_ratio():
    wide = np.full((900, 1600, 3), 200, np.uint8)
    boxed = fit_to_model(wide, small_rig(SMALL_FRONT, resize="letterbox"))
    assert boxed.shape == (96, 128, 3)
    assert np.all(boxed[:12] == 0) and np.all(boxed[-12:] == 0) and np.all(boxed[12:-12] == 200)  # 128x72
    wide[:, :200] = (255, 0, 0)  # crop to 4:3 keeps columns 200..1400 of 1600
    wide[:, 1400:] = (0, 0, 255)
    cropped = fit_to_model(wide, small_rig(SMALL_FRONT, resize="crop"))
    assert cropped.shape == (96, 128, 3) and np.all(cropped[:, 1:-1] == 200)
    square = fit_to_model(np.full((160, 160, 3), 90, np.uint8), small_rig(SMALL_FRONT))
    assert np.all(square[:, :16] == 0) and np.all(square[:, 16:112] == 90) and np.all(square[:, 112:] == 0)


def test_renders_are_deterministic(scene):
    road, ego, marker = scene
    place(ego, marker, 15.0, 4.0)
    rig = load_rig("front3")
    a, b = CameraRenderer(rig), CameraRenderer(rig)
    first = a.render_model_inputs(road, ego)
    assert digest(first) == digest(a.render_model_inputs(road, ego)) == digest(b.render_model_inputs(road, ego))
    assert set(first) == set(rig.names) and all(f.shape == (96, 128, 3) for f in first.values())
    native = a.render(road, ego)
    assert native["front"].shape == (900, 1600, 3) and digest(native) == digest(b.render(road, ego))
    sampled = [Appearance.sample(np.random.default_rng(s)) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    a.set_appearance(sampled[0])
    b.set_appearance(sampled[1])
    assert digest(a.render_model_inputs(road, ego)) == digest(b.render_model_inputs(road, ego)) != digest(first)


def test_snapshot_restore_renders_the_same_frames():
    """Rollout branches restore snapshots (deep copies): same picture, vehicle colours included."""
    sim = DrivingSim("intersection", seed=2)
    renderer = CameraRenderer(load_rig("front3"))
    for _ in range(20):
        sim.step(6.0, 0.0)
    snap = sim.snapshot()
    before = digest(renderer.render_model_inputs(sim.env.road, sim.vehicle))
    for _ in range(5):
        sim.step(6.0, 0.0)
    assert digest(renderer.render_model_inputs(sim.env.road, sim.vehicle)) != before
    sim.restore(snap)
    assert digest(renderer.render_model_inputs(sim.env.road, sim.vehicle)) == before
    sim.close()


def test_car_ahead_is_centred_and_grows_when_closer(scene):
    road, ego, marker = scene
    renderer = CameraRenderer(small_rig(SMALL_FRONT), FLAT)
    areas = {}
    for distance in (20.0, 10.0):
        place(ego, marker, distance, 0.0)
        mask = marker_mask(renderer.render(road, ego)["front"])
        cols = np.nonzero(mask)[1]
        assert abs(cols.mean() - 80) < 3, f"car {distance} m ahead not in the centre columns"
        areas[distance] = int(mask.sum())
    assert areas[20.0] > 20 and areas[10.0] > 3 * areas[20.0]


def test_side_camera_sees_the_car_on_the_left(scene):
    road, ego, marker = scene
    renderer = CameraRenderer(load_rig("front3"), FLAT)
    place(ego, marker, 5.0, 8.0)
    frames = renderer.render_model_inputs(road, ego)
    seen = {name: int(marker_mask(img, tol=60).sum()) for name, img in frames.items()}
    assert seen["front_left"] > 50 and seen["front"] == 0 and seen["front_right"] == 0, seen
    place(ego, marker, 20.0, 4.0)  # the lane to the left, ahead: left half of the front image
    cols = np.nonzero(marker_mask(renderer.render_model_inputs(road, ego)["front"], tol=60))[1]
    assert cols.size and cols.max() < 64


@pytest.mark.parametrize("model_size", [False, True])
def test_projection_matches_the_rendered_pixels(scene, model_size):
    road, ego, marker = scene
    ego.heading = 0.3  # an arbitrary pose, camera yawed and pitched: every frame convention is exercised
    cam = CameraSpec("test", 320, 240, 60.0, x=1.0, y=0.5, z=1.6, yaw_deg=10.0, pitch_deg=5.0)
    rig = small_rig(cam, resize="crop")
    renderer = CameraRenderer(rig, FLAT)
    marker.LENGTH = marker.WIDTH = 0.4  # a small marker post, 1.5 m tall
    place(ego, marker, 12.0, 2.0)
    corners = np.array([[12.0 + dx, 2.0 + dy, z] for dx in (-0.2, 0.2) for dy in (-0.2, 0.2)
                        for z in (0.0, VEHICLE_HEIGHT_M)])
    if model_size:
        image = renderer.render_model_inputs(road, ego)["test"]
        T = cam.ego_from_optical()
        pixels, _ = pinhole_project((corners - T[:3, 3]) @ T[:3, :3], rig.model_K(cam))
    else:
        image = renderer.render(road, ego)["test"]
        pixels, _ = cam.project(corners)
    rows, cols = np.nonzero(marker_mask(image, tol=80))
    rendered = [cols.min(), cols.max() + 1, rows.min(), rows.max() + 1]  # pixel edges, continuous
    projected = [pixels[:, 0].min(), pixels[:, 0].max(), pixels[:, 1].min(), pixels[:, 1].max()]
    np.testing.assert_allclose(rendered, projected, atol=2.0)


def test_model_inputs_equal_fitting_the_native_frames():
    """Rendering straight at the model size shows what ``fit_to_model`` makes of the native frame."""
    sim = DrivingSim("roundabout", seed=0)
    cameras = (CameraSpec("front", 320, 180, 70.0, x=0.4, z=1.5),
               CameraSpec("left", 320, 180, 70.0, y=0.5, z=1.5, yaw_deg=55.0))
    for resize in ("crop", "letterbox"):
        rig = small_rig(*cameras, resize=resize)
        renderer = CameraRenderer(rig)
        native = renderer.render(sim.env.road, sim.vehicle)
        direct = renderer.render_model_inputs(sim.env.road, sim.vehicle)
        for name in rig.names:
            diff = np.abs(fit_to_model(native[name], rig).astype(int) - direct[name].astype(int))
            assert diff.mean() < 3.0, (resize, name, diff.mean())
    sim.close()


def _render_in_worker(args):
    scenario, seed = args
    sim = DrivingSim(scenario, seed=seed)
    return digest(CameraRenderer(load_rig("front3")).render_model_inputs(sim.env.road, sim.vehicle))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_renders_the_same_in_worker_processes(method):
    """Rollout workers: a renderer made in a forked or spawned child gives the parent's bytes."""
    here = _render_in_worker(("roundabout", 3))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as pool:
        assert pool.submit(_render_in_worker, ("roundabout", 3)).result(timeout=120) == here


def test_bent_lanes_are_drawn_where_highway_env_puts_them():
    """SineLane (merge ramp, roundabout approaches) subclasses StraightLane: it must not be drawn straight."""
    from highway_env.road.lane import SineLane

    from vla_driver.sim.camera_render import _positions

    lane = SineLane([0.0, 0.0], [100.0, 0.0], amplitude=3.0, pulsation=0.1, phase=0.0)
    s, lat = np.linspace(0.0, 100.0, 21), np.full(21, 1.0)
    expected = np.array([lane.position(a, b) for a, b in zip(s, lat, strict=True)])
    assert np.abs(_positions(lane, s, lat)[:, :2] - expected).max() < 1e-9
