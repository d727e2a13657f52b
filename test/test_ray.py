"""Ray rollouts run for real: a local Ray cluster on the loopback address (``ray start --head``, 2 CPUs),
train-rl on it against the process executor, a rollout actor killed mid-iteration, and checkpoints shipped to
the workers through the object store (no shared file system)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from safetensors.numpy import load_file

from vla_driver.cli import main
from vla_driver.core.camera_rig import load_rig
from vla_driver.model.build import build_random_checkpoint
from vla_driver.model.checkpoint import load_checkpoint, read_manifest, verify_checkpoint
from vla_driver.model.config import VLAConfig
from vla_driver.model.standin import make_llm_standin
from vla_driver.rl.branch_reward import BranchRewardConfig
from vla_driver.rl.online import _tasks
from vla_driver.rl.online_config import TrainRLConfig
from vla_driver.rl.rollout import decision_adapter_state
from vla_driver.rl.rollout_executors import InlineExecutor, RayExecutor, pack_checkpoint, unpack_checkpoint

RAY = str(Path(sys.executable).with_name("ray"))
SMALL = ["--iterations", "1", "--workers", "2", "--group", "3", "--episodes-per-iteration", "2",
         "--episode-seconds", "1", "--scenarios", "highway,merge", "--branch-every", "1", "--horizon", "0.5",
         "--follow", "0.5"]


@pytest.fixture(scope="module")
def cluster():
    """A loopback cluster without Ray 2.60's token authentication (which turns on for `ray start` once a
    local Ray has written ~/.ray/auth_token, and then refused this test's clients)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, env=env, capture_output=True,
                   timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=180)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE")
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def rl_config(**overrides) -> TrainRLConfig:
    return TrainRLConfig(iterations=1, workers=2, episodes_per_iteration=3, scenarios=("highway", "merge"),
                         episode_s=1.0, branch_every=1, group_size=3,
                         reward=BranchRewardConfig(horizon_s=0.5, follow_s=0.5), **overrides)


def train_rl_report(capsys, *args) -> dict:
    assert main(["train-rl", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_rl_on_a_ray_cluster_updates_exactly_as_the_process_executor(tiny_checkpoint, cluster, tmp_path,
                                                                            capsys):
    by_process = train_rl_report(capsys, "--from", str(tiny_checkpoint), "--out", str(tmp_path / "process"), *SMALL)
    by_ray = train_rl_report(capsys, "--from", str(tiny_checkpoint), "--out", str(tmp_path / "ray"), *SMALL,
                             "--executor", "ray", "--ray-address", cluster)
    assert by_ray["executor"] == "ray" and by_process["executor"] == "process"
    assert by_ray["workers_replaced"] == 0
    for key in ("branches", "branch_points", "final_reward_mean"):
        assert by_ray[key] == by_process[key], key
    adapter = "adapters/decision/adapter_model.safetensors"
    a, b = load_file(str(tmp_path / "ray" / adapter)), load_file(str(tmp_path / "process" / adapter))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    before = load_file(str(tiny_checkpoint / adapter))
    assert any(not np.allclose(a[k], before[k]) for k in a)  # the update did something


def test_a_rollout_actor_killed_mid_iteration_is_replaced_and_the_iteration_completes(tiny_checkpoint, cluster):
    cfg = rl_config()
    model = load_checkpoint(tiny_checkpoint)
    tasks = _tasks(cfg, 0, decision_adapter_state(model))
    with InlineExecutor(str(tiny_checkpoint), cfg, model) as inline:
        expected = {(r.scenario, r.seed): r for r in inline.map(tasks)}
    with RayExecutor(str(tiny_checkpoint), cfg, workers=2, address=cluster) as executor:
        results = executor.map(tasks)
        got = [next(results)]
        for actor in list(executor.actors):  # both were handed a task; at least one is still running it
            ray.kill(actor)
        got += list(results)
        assert executor.replaced >= 1
    assert sorted((r.scenario, r.seed) for r in got) == sorted(expected)
    for r in got:
        e = expected[(r.scenario, r.seed)]
        assert [p.candidates.tolist() for p in r.points] == [p.candidates.tolist() for p in e.points]
        assert np.allclose([p.rewards for p in r.points], [p.rewards for p in e.points])


def test_a_checkpoint_on_a_referenced_base_ships_whole_and_loads_without_the_original_path(tmp_path):
    base = make_llm_standin(tmp_path / "llm", "tiny")
    cfg = VLAConfig.for_rig(load_rig("front"), llm_pretrained_dir=str(base))
    ckpt = build_random_checkpoint(tmp_path / "ckpt", cfg=cfg, self_contained=False)
    (ckpt / ".onnx.lock").touch()
    files = pack_checkpoint(ckpt)
    assert "base/pretrained/model.safetensors" in files and ".onnx.lock" not in files
    shutil.rmtree(base)  # another machine: the recorded path does not exist there
    copy = unpack_checkpoint(files, tmp_path / "worker" / "checkpoint")
    assert verify_checkpoint(copy)["model_version"] == read_manifest(ckpt)["model_version"]
    assert load_checkpoint(copy).model_version == read_manifest(ckpt)["model_version"]
    weights = copy / "base" / "pretrained" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="not the referenced base"):
        verify_checkpoint(copy)
