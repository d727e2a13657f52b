"""Embedded simulator, expert, closed loop, dataset, rendering and the eval CLI (short episodes)."""
import json
import re

import numpy as np
import pytest

from vla_driver.core.trajectory import TrajectorySpec, constant_motion
from vla_driver.core.types import DecisionResult
from vla_driver.core.vocabulary import Decision, DecisionVocabulary
from vla_driver.sim.closed_loop import HELDOUT_SEEDS, TRAIN_SEEDS, run_episode
from vla_driver.sim.dataset import record_expert_dataset
from vla_driver.sim.expert import ExpertPolicy
from vla_driver.sim.highway import DrivingSim
from vla_driver.sim.render import save_episode_gif, save_episode_png
from vla_driver.sim.scenarios import SCENARIOS
from vla_driver.sim.shards import load_dataset
from vla_driver.sim.topdown import ego_to_pixel

NAV_PATTERNS = {
    "highway": r"^Follow the road for \d+m$",
    "merge": r"^Ramp merges from the right in \d+m, then follow the road for \d+m$",
    "roundabout": r"^Take the (first|second|third) exit at the roundabout in \d+m$",
    "intersection": r"^(Turn (left|right) at|Go straight through) the intersection in \d+m$",
}


class StraightAhead:
    """Naive baseline: keeps its speed and drives straight, whatever the road does."""

    needs_image = False
    vocab = DecisionVocabulary.preset("alphadrive")

    def decide(self, obs, sample=False, think=False):
        probs = np.full((4, 5), 1 / 20)
        return DecisionResult(Decision("KEEP", "STRAIGHT"), probs, float(np.log(1 / 20)))

    def plan(self, obs, decision):
        return constant_motion(obs.speed, 0.0, TrajectorySpec())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_short_expert_episode_is_sane(scenario):
    sim = DrivingSim(scenario, seed=3, duration_s=4.0)
    obs = sim.observation()
    assert obs.image.shape == (128, 256, 3) and obs.image.dtype == np.uint8
    assert obs.image.mean() > 30 and obs.image.std() > 10  # not black, not flat
    col, row = ego_to_pixel(np.zeros((1, 2)), obs.image.shape[:2])[0].astype(int)
    r, g, b = obs.image[row, col].astype(int)
    assert g > 150 and r < 120  # the green ego car sits where the camera layout says
    assert re.match(NAV_PATTERNS[scenario], obs.navigation), obs.navigation
    result, _ = run_episode(ExpertPolicy(), scenario, 3, sim=sim)
    assert result.termination in ("timeout", "completed")
    assert not result.collided and not result.infractions and not result.extras  # extras count policy errors
    assert result.duration_s == pytest.approx(4.0, abs=0.11)
    assert result.distance_m > 10.0 and 0.0 < result.route_completion < 1.0
    assert np.isfinite(result.mean_jerk)


def test_seeds_reproduce_and_differ():
    a, b, c = (DrivingSim("highway", seed=s) for s in (5, 5, 6))
    pos = [np.array([v.position for v in sim.env.road.vehicles]) for sim in (a, b, c)]
    np.testing.assert_array_equal(pos[0], pos[1])
    assert pos[0].shape != pos[2].shape or not np.allclose(pos[0], pos[2])
    assert set(TRAIN_SEEDS).isdisjoint(HELDOUT_SEEDS)


def test_commands_move_the_ego_in_a_right_handed_frame():
    sim = DrivingSim("highway", seed=1)
    x0, y0, yaw0, v0 = sim.ego_pose()
    for _ in range(10):
        sim.step(v0, 0.1)  # positive yaw rate = turn left
    x1, y1, yaw1, _ = sim.ego_pose()
    assert yaw1 - yaw0 == pytest.approx(0.1, abs=0.03)
    assert y1 > y0 and x1 > x0
    for _ in range(10):
        info = sim.step(0.0, 0.0)
    assert sim.ego_pose()[3] == pytest.approx(v0 - 8.0, abs=0.5)  # braking at the 8 m/s^2 limit
    assert info.time == pytest.approx(2.0)


def test_snapshot_restore_replays_identically():
    sim = DrivingSim("intersection", seed=2)
    for _ in range(5):
        sim.step(9.0, 0.0)
    snap = sim.snapshot()
    commands = [(9.0 - 0.3 * k, 0.05 * np.sin(k)) for k in range(15)]

    def rollout():
        poses = []
        for cmd in commands:
            sim.step(*cmd)
            poses.append(sim.ego_pose())
            poses.append(tuple(v.position[0] for v in sim.env.road.vehicles))
        return poses

    first = rollout()
    sim.restore(snap)
    assert sim.time == pytest.approx(0.5)
    second = rollout()
    sim.restore(snap)
    third = rollout()
    assert first == second == third


def test_expert_beats_a_naive_policy_on_the_roundabout():
    expert, _ = run_episode(ExpertPolicy(), "roundabout", 0, sim=DrivingSim("roundabout", 0, duration_s=12.0))
    naive, _ = run_episode(StraightAhead(), "roundabout", 0, sim=DrivingSim("roundabout", 0, duration_s=12.0))
    assert not expert.infractions and expert.route_completion > 0.3
    assert naive.infractions and naive.driving_score < expert.driving_score - 0.2


def test_expert_decisions_are_held_and_plans_follow_the_decision():
    sim = DrivingSim("highway", seed=3)  # nearest car ahead is far away: every meta-action is safe here
    expert = ExpertPolicy(sim)
    decision = expert.decide(sim.observation(render=False), think=True)
    assert decision.probs.shape == (4, 5) and decision.probs.sum() == pytest.approx(1.0)
    assert decision.decision.reasoning.startswith("I drive at")
    fast = expert.plan(None, Decision("ACCELERATE", "STRAIGHT")).speeds()
    slow = expert.plan(None, Decision("DECELERATE", "STRAIGHT")).speeds()
    stop = expert.plan(None, Decision("STOP", "STRAIGHT")).speeds()
    assert fast[-1] > slow[-1] > stop[-1] + 5.0


def test_dataset_round_trip(tmp_path):
    meta = record_expert_dataset(tmp_path / "data", ["merge"], [7], image_size=(64, 128), perturb_prob=0.0,
                                 progress=False)
    data = load_dataset(tmp_path / "data")
    n = meta["samples"]
    assert n >= 15 and data["image"].shape == (n, 64, 128, 3) and data["image"].dtype == np.uint8
    assert data["future"].shape == (n, 6, 3) and data["ego"].shape == (n, 3)
    for key in ("navigation", "speed", "path", "reasoning", "scenario"):
        assert data[key].dtype.kind == "U", key
    vocab = DecisionVocabulary.from_dict(meta["vocabulary"])
    assert all(vocab.candidate_index(s, p) == i for s, p, i in zip(data["speed"], data["path"],
                                                                     data["decision_index"], strict=True))
    first_step = np.linalg.norm(data["future"][:, 0, :2], axis=1)  # metres driven in the first 0.5 s
    np.testing.assert_allclose(first_step, data["ego"][:, 0] * 0.5, atol=1.5)
    assert np.all(np.diff(data["time"]) > 0) and set(data["scenario"]) == {"merge"}
    with np.load(tmp_path / "data" / meta["shards"][0], allow_pickle=False) as shard:
        assert "future" in shard.files


def test_render_episode_gif_and_png(tmp_path):
    sim = DrivingSim("merge", seed=1, duration_s=1.0, image_size=(64, 128))
    result, frames = run_episode(ExpertPolicy(), "merge", 1, sim=sim, record_frames=True)
    assert len(frames) == 10 and frames[0]["trajectory"].shape == (6, 3)
    from PIL import Image

    gif = save_episode_gif(frames, tmp_path / "ep.gif", every=2)
    with Image.open(gif) as im:
        assert im.n_frames == 5 and im.size == (256, 128)
    png = save_episode_png(frames, tmp_path / "ep.png", count=3)
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape == (3 * 64, 128, 3)
    assert np.any(np.all(pixels == (255, 60, 60), axis=-1))  # the trajectory is drawn


def test_eval_cli_prints_table_and_one_json_line(capsys):
    from vla_driver.cli import main

    assert main(["eval", "--policy", "expert", "--scenarios", "merge", "--episodes", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("merge") for line in lines)
    report = json.loads(lines[-1])
    assert report["bench"] == "closed_loop" and report["policy"] == "expert"
    assert 0.0 <= report["driving_score"] <= 1.0 and report["expert_driving_score"] == report["driving_score"]
    with pytest.raises(SystemExit):
        main(["eval", "--policy", "expert", "--scenarios", "nowhere", "--episodes", "1"])


def test_eval_reuses_saved_expert_results_on_the_same_seeds_only(tiny_checkpoint, tmp_path, capsys):
    from vla_driver.cli import main

    saved = tmp_path / "expert.json"
    assert main(["eval", "--policy", "expert", "--scenarios", "merge", "--episodes", "1",
                 "--json-out", str(saved)]) == 0
    expert_ds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["driving_score"]
    episodes = json.loads(saved.read_text())
    episodes[0]["route_completion"] = 0.5  # a marker: the reused figures, not a fresh expert drive
    saved.write_text(json.dumps(episodes))
    args = ["eval", "--policy", str(tiny_checkpoint), "--scenarios", "merge", "--expert-json", str(saved)]
    assert main(args + ["--episodes", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["expert_driving_score"] < expert_ds  # from the edited file
    with pytest.raises(SystemExit, match="lacks"):  # a second seed the file does not hold
        main(args + ["--episodes", "2"])


def test_evaluate_in_worker_processes_gives_the_same_results_in_the_same_order():
    from vla_driver.sim.closed_loop import evaluate
    from vla_driver.sim.expert import ExpertPolicy

    seeds = list(HELDOUT_SEEDS[:2])
    inline = evaluate(ExpertPolicy, ["merge", "intersection"], seeds, progress=False, duration_s=3.0)
    pooled = evaluate(ExpertPolicy, ["merge", "intersection"], seeds, progress=False, duration_s=3.0, workers=2)
    assert [(r.scenario, r.seed) for r in pooled] == [(s, k) for s in ("merge", "intersection") for k in seeds]
    assert [r.to_dict() for r in pooled] == [r.to_dict() for r in inline]
    assert all(r.duration_s == pytest.approx(3.0) for r in inline)


def _reference_frame(sim) -> np.ndarray:
    """The camera image drawn entirely by highway-env's own RoadGraphics (what _RoadLayer replaces)."""
    import math

    import pygame
    from highway_env.road.graphics import RoadGraphics

    cam = sim._camera
    cam.surface.move_display_window_to(sim.vehicle.position)
    RoadGraphics.display(sim.env.road, cam.surface)
    RoadGraphics.display_road_objects(sim.env.road, cam.surface, offscreen=True)
    RoadGraphics.display_traffic(sim.env.road, cam.surface, offscreen=True)
    rotated = pygame.transform.rotate(cam.surface, math.degrees(sim.vehicle.heading))
    box = (int(round(rotated.get_width() / 2 - cam.col)), int(round(rotated.get_height() / 2 - cam.row)),
           cam.width, cam.height)
    return pygame.surfarray.array3d(rotated.subsurface(box)).transpose(1, 0, 2)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_camera_frames_equal_highway_env_s_own_drawing_pixel_for_pixel(scenario):
    sim = DrivingSim(scenario, seed=5)
    for step in range(25):
        if step == 12:
            sim.reset(6)  # a new road network: nothing memoised from the old one may be drawn
        frame = sim.render()
        assert np.array_equal(frame, _reference_frame(sim)), f"step {step}"
        sim.step(20.0 if scenario == "highway" else 8.0, 0.05)
