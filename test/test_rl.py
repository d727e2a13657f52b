"""Online RL by branching, the promotion gate and registry, checkpoint hot swap in the nodes, refresh CLI."""
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
DOMAIN_ID = 161  # distinct from the other ROS test files (141 nodes, 142 launch, 151 logger, 152 replay)

from conftest import wait_until  # noqa: E402

from vla_driver.core.control import PurePursuitPID  # noqa: E402
from vla_driver.core.trajectory import TrajectorySpec, constant_motion  # noqa: E402
from vla_driver.core.vocabulary import SPEED_SEMANTICS, Decision, DecisionVocabulary  # noqa: E402
from vla_driver.model.checkpoint import load_checkpoint, read_manifest, save_checkpoint  # noqa: E402
from vla_driver.rl.branch_reward import BranchRewardConfig, branch_reward  # noqa: E402
from vla_driver.rl.branches import run_branches  # noqa: E402
from vla_driver.rl.online import train_rl  # noqa: E402
from vla_driver.rl.online_config import TrainRLConfig  # noqa: E402


class LiteralPlanner:
    """Plans exactly what a decision says (constant acceleration straight ahead), so that the branch
    outcome depends on the decision alone; an untrained action expert would not."""

    needs_image = False
    ACCEL = {"accelerate": 2.5, "keep": 0.0, "decelerate": -3.0, "decelerate_hard": -5.0, "stop": -6.0}

    def plan(self, obs, decision):
        return constant_motion(obs.speed, 0.0, TrajectorySpec(), accel=self.ACCEL[SPEED_SEMANTICS[decision.speed]])


def slower_car_ahead(sim):
    """Ego at 15 m/s on the lane centre, one car 25 m ahead in its lane at 8 m/s, no other traffic."""
    from highway_env.vehicle.behavior import IDMVehicle

    road, ego = sim.env.road, sim.vehicle
    lane = road.network.get_lane(ego.lane_index)
    s, _ = lane.local_coordinates(ego.position)
    ego.position, ego.heading, ego.speed = lane.position(s, 0.0), lane.heading_at(s), 15.0
    lead = IDMVehicle(road, lane.position(s + 25.0, 0.0), lane.heading_at(s + 25.0), speed=8.0,
                      target_lane_index=ego.lane_index, target_speed=8.0)
    road.vehicles[:] = [ego, lead]


def test_branching_reward_ranks_the_crashing_decision_below_the_safe_one():
    from vla_driver.sim.highway import DrivingSim

    sim = DrivingSim("highway", seed=3)
    slower_car_ahead(sim)
    snapshot = sim.snapshot()
    decisions = [Decision("STOP", "STRAIGHT"), Decision("DECELERATE", "STRAIGHT"), Decision("ACCELERATE", "STRAIGHT")]
    branches = [DrivingSim("highway", seed=3) for _ in decisions]
    outcomes = run_branches(LiteralPlanner(), snapshot, PurePursuitPID(), decisions, branches, horizon_s=3.0)
    stop, decelerate, accelerate = (branch_reward(o, pace_mps=16.7) for o in outcomes)
    assert accelerate["collision"] == 1.0 and outcomes[2].termination == "collision"
    assert stop["collision"] == decelerate["collision"] == 0.0
    assert accelerate["total"] < min(stop["total"], decelerate["total"])
    assert accelerate["progress"] > stop["progress"] > 0  # it got further, and still ranks last
    sparse = [branch_reward(o, 16.7, BranchRewardConfig(sparse=True))["total"] for o in outcomes]
    assert sparse == [0.0, 0.0, -1.0]
    # the branches never touched the scene they started from
    assert sim.time == 0.0 and len(sim.env.road.vehicles) == 2
    again = run_branches(LiteralPlanner(), snapshot, PurePursuitPID(), decisions[2:], branches)
    assert again[0].progress_m == pytest.approx(outcomes[2].progress_m)  # restore() is exact: same outcome


def test_headway_term_ranks_closing_in_on_a_slower_car_below_braking_before_any_crash():
    """Held 1.5 s, KEEP crashes nobody yet and gains more route than DECELERATE; only its headway, 0.63 s
    behind the slower car against 1.33 s, tells the two apart in DECELERATE's favour."""
    from vla_driver.sim.highway import DrivingSim

    sim = DrivingSim("highway", seed=3)
    slower_car_ahead(sim)
    assert sim.time_headway() == pytest.approx((25.0 - 5.0) / 15.0)  # bumper gap / ego speed
    decisions = [Decision("KEEP", "STRAIGHT"), Decision("DECELERATE", "STRAIGHT")]
    keep, decelerate = run_branches(LiteralPlanner(), sim.snapshot(), PurePursuitPID(), decisions,
                                    [DrivingSim("highway", seed=3) for _ in decisions], horizon_s=1.5,
                                    track_headway=True)
    assert not keep.collided and not decelerate.collided
    assert keep.min_headway_s == pytest.approx((25.0 - 5.0 - (15.0 - 8.0) * 1.5) / 15.0, abs=0.05)
    assert decelerate.min_headway_s > 1.3
    plain, with_headway = BranchRewardConfig(horizon_s=1.5), BranchRewardConfig(horizon_s=1.5, headway_s=2.0)
    assert branch_reward(keep, 16.7, plain)["total"] > branch_reward(decelerate, 16.7, plain)["total"]
    scored = [branch_reward(o, 16.7, with_headway) for o in (keep, decelerate)]
    assert scored[0]["tailgating"] == pytest.approx(1 - keep.min_headway_s / 2.0)
    assert scored[0]["total"] < scored[1]["total"]
    sim.env.road.vehicles[1].heading += math.pi / 2
    assert sim.time_headway() == float("inf")  # a car crossing our lane is not one to follow
    sim.vehicle.speed = 0.0
    assert sim.time_headway() == float("inf")  # standing still: no headway to keep


class FixedDecider(LiteralPlanner):
    """LiteralPlanner that also decides: always ``decision`` (a log-probability table peaked on it)."""

    vocab = DecisionVocabulary.preset("alphadrive")

    def __init__(self, decision: Decision):
        self.index = self.vocab.candidate_index(decision.speed, decision.path)

    def decision_table(self, observations):
        table = np.full((len(observations), self.vocab.num_candidates), -20.0)
        table[:, self.index] = 0.0
        return table.reshape(len(observations), len(self.vocab.speeds), len(self.vocab.paths))


def test_branches_follow_on_with_the_policy_s_own_decisions_after_the_held_one():
    """Accelerating for 0.5 s towards a slower car is harmless if the policy then stops, and a crash if it
    keeps accelerating: the follow-on part of the branch is driven by the policy's decisions and scored."""
    from vla_driver.sim.highway import DrivingSim

    sim = DrivingSim("highway", seed=3)
    slower_car_ahead(sim)
    snapshot = sim.snapshot()
    branches = [DrivingSim("highway", seed=3)]
    accelerate = Decision("ACCELERATE", "STRAIGHT")
    run = {name: run_branches(FixedDecider(Decision(name, "STRAIGHT")), snapshot, PurePursuitPID(), [accelerate],
                              branches, horizon_s=0.5, follow_s=3.5)[0] for name in ("STOP", "ACCELERATE")}
    short = run_branches(FixedDecider(accelerate), snapshot, PurePursuitPID(), [accelerate], branches, horizon_s=0.5)[0]
    assert not short.collided and short.speeds.size == 6  # 0.5 s alone ends before the crash
    assert run["ACCELERATE"].collided and not run["STOP"].collided
    assert run["STOP"].speeds.size == 41 and run["STOP"].speeds[-1] < 1.0  # 4 s driven, stopped behind the car
    assert run["STOP"].decision == accelerate  # the outcome belongs to the held decision
    cfg = BranchRewardConfig(horizon_s=0.5, follow_s=3.5)
    assert branch_reward(run["STOP"], 16.7, cfg)["total"] > branch_reward(run["ACCELERATE"], 16.7, cfg)["total"]


def test_standing_still_until_the_blocked_timeout_pays_the_blocked_penalty_and_driving_on_does_not():
    """The ego has stood on an empty highway for 8 s of its 10 s blocked allowance: holding STOP for 3 s
    more ends the episode blocked (the timer survives snapshot / restore), ACCELERATE drives away."""
    from vla_driver.sim.episode import BLOCKED_S
    from vla_driver.sim.highway import DrivingSim

    sim = DrivingSim("highway", seed=3)
    sim.vehicle.speed = 0.0
    sim.env.road.vehicles[:] = [sim.vehicle]
    start = sim.progress
    while sim.time < BLOCKED_S - 2.0 - 1e-9:
        sim.step(0.0, 0.0)
    assert not sim.done and sim.progress - start < 1.0
    decisions = [Decision("STOP", "STRAIGHT"), Decision("ACCELERATE", "STRAIGHT")]
    stop, accelerate = run_branches(LiteralPlanner(), sim.snapshot(), PurePursuitPID(), decisions,
                                    [DrivingSim("highway", seed=3) for _ in decisions], horizon_s=3.0)
    assert stop.termination == "blocked" and accelerate.termination == "" and accelerate.progress_m > 1.0
    free, charged = BranchRewardConfig(), BranchRewardConfig(blocked_penalty=1.5)
    for cfg in (free, charged):
        assert [branch_reward(o, 16.7, cfg)["blocked"] for o in (stop, accelerate)] == [1.0, 0.0]
    assert branch_reward(stop, 16.7, charged)["total"] == pytest.approx(branch_reward(stop, 16.7, free)["total"] - 1.5)
    assert branch_reward(accelerate, 16.7, charged)["total"] == pytest.approx(branch_reward(accelerate, 16.7, free)["total"])
    with pytest.raises(ValueError, match="blocked_penalty"):
        TrainRLConfig(reward=BranchRewardConfig(blocked_penalty=-1.0)).validate()


def test_one_train_rl_iteration_with_two_process_workers_changes_only_the_decision_adapter(tiny_checkpoint, tmp_path):
    cfg = TrainRLConfig(iterations=1, workers=2, episodes_per_iteration=2, scenarios=("highway", "merge"),
                        episode_s=1.0, branch_every=1, group_size=3, batch_size=8,
                        reward=BranchRewardConfig(horizon_s=0.5, pace_mps=100.0))  # unclipped progress
    out = tmp_path / "rl"
    report = train_rl(tiny_checkpoint, out, cfg, progress=False)
    [it] = report["iterations_detail"]
    assert it["episodes"] == 2 and it["branch_points"] == 4  # decisions at 0 and 0.5 s in each 1 s episode
    assert 4 <= it["branches"] <= 12 and report["branches_per_s"] > 0 and np.isfinite(it["kl"])
    parent, child = read_manifest(tiny_checkpoint), read_manifest(out)
    assert child["lineage"]["parent"] == parent["model_version"] and child["lineage"]["kind"] == "grpo_online"
    assert child["lineage"]["seeds"] == {"highway": [0], "merge": [1]}
    assert child["adapters"] == ["action", "decision"] and (tmp_path / "rl.rl.png").is_file()
    weights = [f for f in parent["files"] if f.endswith((".safetensors", "tokenizer.json"))]  # json configs
    changed = {f for f in weights if child["files"][f] != parent["files"][f]}  # differ in load-path metadata
    assert changed == {"adapters/decision/adapter_model.safetensors"}, changed


def test_groups_of_one_decision_are_kept_but_not_driven(tiny_checkpoint):
    """At a near-zero temperature every draw is the greedy decision: zero advantages, so no branch is driven."""
    import dataclasses

    from vla_driver.rl.rollout import RolloutTask, RolloutWorker, decision_adapter_state

    cfg = TrainRLConfig(workers=0, scenarios=("merge",), episode_s=2.0, branch_every=1, group_size=4)
    cfg.grpo = dataclasses.replace(cfg.grpo, temperature=1e-4)
    worker = RolloutWorker(str(tiny_checkpoint), cfg)
    # the action expert never changes in RL: it plans on ONNX Runtime; decisions use the learner's torch weights
    assert worker.planner.backend_name == "onnxruntime" and worker.policy.backend_name == "torch"
    try:
        result = worker.rollout(RolloutTask("merge", 0, 0, decision_adapter_state(worker.policy.model)))
    finally:
        worker.close()
    assert len(result.points) == 4 and result.branches == 0  # decision points at 0, 0.5, 1 and 1.5 s
    assert all(not p.simulated and np.ptp(p.candidates) == 0 for p in result.points)
    assert result.sim_steps == 20 and result.episode.duration_s == pytest.approx(2.0)


def head_checkpoint(src, dst, lateral: float):
    """A copy of ``src`` whose trajectory head ignores its inputs: straight ahead at the current speed
    (lateral=0), or veering ``lateral`` units to the left in every mode (drives off the road)."""
    model = load_checkpoint(src)
    last = model.traj_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias.view(len(model.vocab.speeds), model.cfg.num_waypoints, 3)[..., 1] = lateral
    return save_checkpoint(model, dst, lineage={"kind": "test", "lateral": lateral})


def test_gate_refuses_a_worse_candidate_accepts_an_identical_one_and_promote_keeps_a_registry(tiny_checkpoint,
                                                                                              tmp_path):
    from vla_driver.rl.gate import current_version, gate, promote

    cruise = head_checkpoint(tiny_checkpoint, tmp_path / "cruise", 0.0)
    veer = head_checkpoint(tiny_checkpoint, tmp_path / "veer", 10.0)
    twin = shutil.copytree(cruise, tmp_path / "twin")
    quick = {"scenarios": ["highway"], "duration_s": 2.0, "progress": False}

    refused = gate(cruise, veer, episodes=2, **quick)
    overall = refused.metrics["closed_loop"]["overall"]
    assert not refused.promote and "worse by" in refused.reasons[0]
    assert overall["candidate"]["driving_score"] < 0.5 * overall["baseline"]["driving_score"]  # clearly worse
    assert overall["ds_diff"] < 0 and overall["baseline"]["episodes"] == 2
    assert {p["seed"] for p in refused.metrics["closed_loop"]["pairs"]} == {100000, 100001}  # held out

    accepted = gate(cruise, twin, episodes=1, **quick)
    assert accepted.promote and "not worse" in accepted.reasons[0]
    assert accepted.metrics["closed_loop"]["overall"]["ds_diff"] == 0.0

    registry = tmp_path / "registry"
    first = promote(tiny_checkpoint, registry)
    second = promote(twin, registry, accepted)
    version = read_manifest(twin)["model_version"]
    assert current_version(registry) == version and (registry / "current").resolve() == (registry / version).resolve()
    assert read_manifest(registry / "current")["model_version"] == version
    assert second["previous"] == first["model_version"] and second["gate"]["promote"] is True
    assert second["engine"]["built"] is False and "skipped" in second["engine"]["skipped"]  # no TensorRT here
    log = [json.loads(line) for line in (registry / "registry.jsonl").read_text().splitlines()]
    assert [r["model_version"] for r in log] == [first["model_version"], version]
    assert log[1]["lineage"]["kind"] == "test"


@pytest.mark.usefixtures("node_threads")
def test_checkpoint_hot_swap_through_rclpy_keeps_deciding_and_reports_the_new_version(tiny_policy, tmp_path):
    """Waits for messages (60 s deadlines) and never for a time: a busy machine makes cycles late, but a
    skipped cycle shows as one that published no decision although fresh inputs kept coming."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from nav_msgs.msg import Odometry
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from vla_driver.model.build import build_random_checkpoint
    from vla_driver.nodes.convert import EgoState, rgb_to_image, state_to_odometry
    from vla_driver.nodes.decision_node import DecisionNode
    from vla_driver.nodes.executor import MultiThreadedExecutor
    from vla_driver.nodes.spin import stop_executor

    new_ckpt = build_random_checkpoint(tmp_path / "next", seed=1)
    new_version = read_manifest(new_ckpt)["model_version"]
    assert new_version != tiny_policy.model_version
    published, cycles = [], []  # decisions as the node published them; per timer cycle: did it publish?

    class CountingDecisionNode(DecisionNode):
        def decide(self) -> None:
            before = len(published)
            super().decide()
            cycles.append(len(published) > before)

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    driver = rclpy.create_node("hot_swap_driver", context=context)
    node = CountingDecisionNode(tiny_policy, on_decision=published.append, context=context,
                                parameter_overrides=[Parameter("backend", value="torch")])
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    for n in (driver, node):
        executor.add_node(n)
    received, lock = [], threading.Lock()
    diagnostics = []

    def on_decision(msg):
        with lock:
            received.append(json.loads(msg.data)["model_version"])

    driver.create_subscription(String, "decision", on_decision, 10)
    driver.create_subscription(DiagnosticArray, "/diagnostics",
                               lambda m: diagnostics.extend(s for s in m.status if "decision_node" in s.name), 10)
    image_pub, odom_pub = driver.create_publisher(Image, "image", 5), driver.create_publisher(Odometry, "odom", 10)
    rgb = np.random.default_rng(0).integers(0, 255, (128, 256, 3), dtype=np.uint8)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    def drive():  # camera and odometry at 20 Hz for the whole test, like sensor drivers
        while not stop.is_set():
            stamp = driver.get_clock().now().nanoseconds * 1e-9
            odom_pub.publish(state_to_odometry(EgoState(8.0, 0.0, 0.0, 0.0, 0.0, stamp)))
            image_pub.publish(rgb_to_image(rgb, stamp))
            time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (spin, drive)]
    for t in threads:
        t.start()

    def versions():
        with lock:
            return list(received)

    def shows(predicate) -> bool:
        return any(predicate(s) for s in list(diagnostics))

    try:
        assert wait_until(lambda: len(versions()) >= 3), "no decisions before the swap"
        client = AsyncParameterClient(driver, "decision_node")
        assert client.wait_for_services(timeout_sec=60.0)
        future = client.set_parameters([Parameter("checkpoint", value=str(new_ckpt))])
        assert wait_until(lambda: future.done() and versions()[-1] == new_version), "the new model never decided"
        assert future.result().results[0].successful
        first_new = versions().index(new_version)
        assert wait_until(lambda: len(versions()) >= first_new + 3)
        seen = versions()
        assert set(seen[:first_new]) == {tiny_policy.model_version} and set(seen[first_new:]) == {new_version}
        assert node.diagnostics.counters["swaps"] == 1
        assert wait_until(lambda: shows(lambda s: any(kv.key == "model_version" and kv.value == new_version
                                                      for kv in s.values)))

        bad = client.set_parameters([Parameter("checkpoint", value=str(tmp_path / "missing"))])
        assert wait_until(lambda: bad.done() and shows(lambda s: s.level == DiagnosticStatus.ERROR
                                                       and "not loaded" in s.message))
        assert node.diagnostics.counters["swap_errors"] == 1
        count = len(versions())
        assert wait_until(lambda: len(versions()) >= count + 2)
        assert versions()[-1] == new_version and node.policy.model_version == new_version  # old policy kept
        done = list(cycles)  # from the first decision on, through both swaps, every cycle decided
        assert sum(done) >= len(seen) and all(done[done.index(True):]), done
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5.0)
        stop_executor(executor)
        node.destroy_node()
        driver.destroy_node()
        rclpy.shutdown(context=context)


def test_refresh_cli_trains_a_new_checkpoint_from_a_recorded_bag(tiny_checkpoint, tmp_path, capsys):
    from vla_driver.cli import main
    from vla_driver.harness.record_sim import record_sim

    bag = record_sim(tmp_path / "bags", "highway", seconds=5.0, policy="expert", seed=4, progress=False)
    out = tmp_path / "refreshed"
    code = main(["refresh", "--experience", str(bag), "--from", str(tiny_checkpoint), "--out", str(out),
                 "--grpo-steps", "2", "--batch-size", "4", "--group-size", "2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bench"] == "refresh" and report["samples"] >= 2 and report["grpo_steps"] == 2
    manifest = read_manifest(out)
    assert manifest["lineage"]["kind"] == "grpo_refresh"
    assert manifest["lineage"]["parent"] == read_manifest(tiny_checkpoint)["model_version"]
    assert Path(str(out) + ".refresh.png").is_file()


def test_ray_executor_without_ray_fails_with_a_clear_error(tiny_checkpoint, monkeypatch):
    import sys

    from vla_driver.rl.rollout_executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as where the optional extra is not installed
    with pytest.raises(RuntimeError, match="--executor ray needs the 'ray' package"):
        make_executor(tiny_checkpoint, TrainRLConfig(executor="ray"))


def test_gate_cli_evaluates_the_held_out_seeds_it_is_told_and_pools_replay_accuracy_over_the_bags(
        tiny_checkpoint, tmp_path, capsys):
    from vla_driver.cli import main
    from vla_driver.harness.record_sim import record_sim

    # two drives in a replay-set folder, one drive folder per drive (as `bench open-loop --out` writes), one apart
    bags = [record_sim(folder, name, seconds=seconds, policy="expert", seed=seed, progress=False)
            for folder, name, seconds, seed in ((tmp_path / "set" / "highway_3s", "highway", 3.0, 4),
                                                (tmp_path / "set" / "highway_5s", "highway", 5.0, 4),
                                                (tmp_path / "merge_6s", "merge", 6.0, 5))]
    report = tmp_path / "gate.json"
    code = main(["gate", str(tiny_checkpoint), str(tiny_checkpoint), "--scenarios", "merge", "--episodes", "2",
                 "--seed-offset", "3", "--duration", "1", "--report", str(report),
                 "--replay", str(tmp_path / "set"), str(tmp_path / "merge_6s")])
    out = capsys.readouterr().out
    assert code == 0 and "PROMOTE" in out  # a checkpoint is never worse than itself
    metrics = json.loads(report.read_text())["metrics"]
    pairs = metrics["closed_loop"]["pairs"]
    assert [(p["scenario"], p["seed"]) for p in pairs] == [("merge", 100003), ("merge", 100004)]
    replay = metrics["replay"]["candidate"]
    per_bag = replay["bags"]
    assert [Path(r["bag"]) for r in per_bag] == [Path(b) for b in bags]
    # 3 s of driving holds no sample with a 3 s future: listed, left out of the pool
    assert per_bag[0]["samples"] == 0 and per_bag[0]["planning_accuracy"] is None
    assert 0 < per_bag[1]["samples"] < per_bag[2]["samples"]  # 5 s and 6 s of driving
    assert replay["samples"] == per_bag[1]["samples"] + per_bag[2]["samples"]
    weighted = sum(r["planning_accuracy"] * r["samples"] for r in per_bag[1:]) / replay["samples"]
    assert replay["planning_accuracy"] == pytest.approx(weighted)
    assert metrics["replay"]["current"]["planning_accuracy"] == pytest.approx(weighted)
    assert f"on 3 drive(s), {replay['samples']} samples, truth logged: no regression" in out

    # a path that holds no bag is refused before anything is driven
    code = main(["gate", str(tiny_checkpoint), str(tiny_checkpoint), "--replay", str(bags[1]), str(tmp_path / "nope")])
    out = capsys.readouterr().out
    assert code == 2 and f"no bag at {tmp_path / 'nope'}" in out and "PROMOTE" not in out

    # a replay set that yields no sample cannot show there is no regression: refused, not crashed
    code = main(["gate", str(tiny_checkpoint), str(tiny_checkpoint), "--scenarios", "merge", "--episodes", "1",
                 "--duration", "1", "--replay", str(bags[0])])
    out = capsys.readouterr().out
    assert code == 1 and "REFUSE" in out and "gave no planning accuracy" in out


def test_rl_gain_writes_every_episode_pair_and_eval_compare_refuses_options_it_cannot_honour(tiny_checkpoint,
                                                                                            tmp_path, capsys):
    from vla_driver.cli import main

    out = tmp_path / "gain.json"
    assert main(["bench", "rl-gain", "--sft", str(tiny_checkpoint), "--rl", str(tiny_checkpoint), "--scenarios",
                 "merge", "--episodes", "2", "--duration", "1", "--json-out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert [(p["scenario"], p["seed"]) for p in saved["pairs"]] == [("merge", 100000), ("merge", 100001)]
    assert saved["overall"]["ds_diff"] == line["ds_diff"] == 0.0  # a checkpoint against itself
    for extra in (["--gif", str(tmp_path / "a.gif")], ["--expert-json", str(out)], ["--policy", str(tiny_checkpoint)]):
        with pytest.raises(SystemExit, match="--compare, which drives only its two checkpoints"):
            main(["eval", "--compare", str(tiny_checkpoint), str(tiny_checkpoint), *extra])


def test_open_loop_bench_scores_each_checkpoint_against_the_logged_expert_decisions(tiny_checkpoint, tiny_policy,
                                                                                    tmp_path, capsys):
    from vla_driver.cli import main
    from vla_driver.experience.reader import read_samples
    from vla_driver.harness.record_sim import record_sim

    bag = record_sim(tmp_path / "bags", "merge", seconds=5.0, policy="expert", seed=5, progress=False)
    twin = tmp_path / "twin"
    shutil.copytree(tiny_checkpoint, twin)
    assert main(["bench", "open-loop", str(tiny_checkpoint), "--bags", str(tmp_path / "nope")]) == 2
    assert f"open-loop: no bag at {tmp_path / 'nope'}" in capsys.readouterr().out
    assert main(["bench", "open-loop", str(tiny_checkpoint), str(twin), "--bags", str(tmp_path / "bags")]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    rows = report["policies"]
    assert report["bench"] == "open_loop" and report["bags"] == 1 and set(rows) == {Path(tiny_checkpoint).name, "twin"}
    assert rows[Path(tiny_checkpoint).name] == rows["twin"]  # same weights, same inputs -> same row
    spec = tiny_policy.spec
    samples = read_samples([str(bag)], horizon_s=spec.horizon, waypoint_dt_s=spec.dt, progress=False)
    assert report["samples"] == len(samples) > 0 and all(s.decision is not None for s in samples)
    hits = [tiny_policy.decide(s.observation()).decision == Decision(s.decision.speed, s.decision.path)
            for s in samples]
    assert rows["twin"]["accuracy"] == pytest.approx(float(np.mean(hits)), abs=1e-4)
    assert "Open-loop planning" in out and "twin" in out
