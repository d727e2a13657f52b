"""Imitation end to end on a tiny scale: DAgger recording with the expert as labeller, SFT that learns."""
import numpy as np
import pytest
import torch

from vla_driver.core.trajectory import TrajectorySpec
from vla_driver.sim.dataset import _record_dagger_episode
from vla_driver.sim.expert import ExpertPolicy
from vla_driver.sim.highway import DrivingSim
from vla_driver.sim.shards import load_dataset, write_shard


@pytest.fixture(scope="module")
def dagger_dir(tiny_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("dagger")
    sim = DrivingSim("highway", 0, duration_s=4.0)
    expert = ExpertPolicy(sim, tiny_policy.vocab, TrajectorySpec(), decision_hz=2.0)
    samples = _record_dagger_episode(sim, expert, tiny_policy, 0, 2.0, 0.3, np.random.default_rng(0))
    sim.close()
    write_shard(out / "highway_000000.npz", samples, tiny_policy.vocab, 0, "highway")
    (out / "meta.json").write_text('{"shards": ["highway_000000.npz"]}')
    return out


def test_dagger_labels_policy_visited_states_with_expert_plans(dagger_dir, tiny_policy):
    data = load_dataset(dagger_dir)
    n = len(data["speed"])
    assert n == 8  # 4 s at 2 Hz, every visited decision point is labelled
    assert data["future"].shape == (n, 6, 3) and np.all(np.isfinite(data["future"]))
    assert data["recovering"].any()  # the (untrained) policy was driving for part of it
    assert set(data["speed"]) <= set(tiny_policy.vocab.speeds)
    # expert plans move forward along the road at roughly the current speed
    assert np.all(data["future"][:, -1, 0] > 0.5 * data["ego"][:, 0] * 3.0 - 5.0)


def test_sft_fits_the_data_and_trains_both_adapters(dagger_dir, tmp_path):
    import json

    from vla_driver.rl.sft import SFTConfig, decisions_from, observations_from, train_sft
    from vla_driver.runtime.loading import load_policy

    cfg = SFTConfig(action_steps=40, decision_steps=40, batch_size=8, threads=2)
    report = train_sft([dagger_dir], tmp_path / "ckpt", cfg=cfg, progress=False)
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["lineage"]["kind"] == "sft" and manifest["lineage"]["samples"] == 8
    assert (tmp_path / "ckpt.loss.png").stat().st_size > 1000
    assert report["final_action_loss"] < 1.0
    data = load_dataset(dagger_dir)
    idx = np.arange(len(data["speed"]))
    policy = load_policy(tmp_path / "ckpt", backend="torch")
    table = np.exp(policy.decision_table(observations_from(data, idx)))  # (n, S, P)
    labels = [(policy.vocab.speed_index(d.speed), policy.vocab.path_index(d.path))
              for d in decisions_from(data, idx)]
    label_prob = np.mean([table[i, s, p] for i, (s, p) in enumerate(labels)])
    assert label_prob > 0.3  # uniform over the 20 candidates would be 0.05


def _base_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}


def test_from_scratch_base_trains_in_phase_one_only_and_fine_tunes_keep_it(dagger_dir, tmp_path):
    """A from-scratch base has no pretraining, so phase 1 trains it; the decision phase and fine-tunes do not."""
    import dataclasses

    from vla_driver.model.build import build_model
    from vla_driver.model.checkpoint import load_checkpoint
    from vla_driver.rl.sft import SFTConfig, SFTTrainer, load_training_data, train_sft

    data = load_training_data([dagger_dir])
    model = build_model(None, seed=0)
    initial = _base_weights(model)
    trainer = SFTTrainer(model, data, SFTConfig(action_steps=4, decision_steps=0, batch_size=4, threads=2,
                                                train_base=True))
    trainer.train(progress=False)
    after_phase1 = _base_weights(model)
    assert any(not torch.equal(initial[n], after_phase1[n]) for n in initial)
    assert all(not p.requires_grad for p in model.parameters())  # frozen again after training

    decision_only = dataclasses.replace(trainer.cfg, action_steps=0, decision_steps=4)
    SFTTrainer(model, data, decision_only).train(progress=False)
    assert all(torch.equal(after_phase1[n], w) for n, w in _base_weights(model).items())

    train_sft([dagger_dir], tmp_path / "first", progress=False,
              cfg=SFTConfig(action_steps=2, decision_steps=2, batch_size=4, train_base=True))
    parent = _base_weights(load_checkpoint(tmp_path / "first"))
    train_sft([dagger_dir], tmp_path / "tuned", base_checkpoint=tmp_path / "first",
              cfg=SFTConfig(action_steps=3, decision_steps=2, batch_size=4, train_base=True), progress=False)
    tuned = _base_weights(load_checkpoint(tmp_path / "tuned"))
    assert all(torch.equal(parent[n], tuned[n]) for n in parent)


def test_data_parallel_sft_keeps_replicas_identical_over_two_torchrun_processes(dagger_dir, tiny_checkpoint,
                                                                                 tmp_path):
    """Two ranks draw different batches; only the gradient averaging keeps their weights equal, and the
    averaged update differs from one process's."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("data_parallel_sft.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(script), str(tiny_checkpoint), str(dagger_dir)]
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                    *args, str(tmp_path / "two")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, *args, str(tmp_path / "one")], check=True, env=env, timeout=300)
    ranks = [json.loads((tmp_path / "two" / f"rank{k}.json").read_text()) for k in (0, 1)]
    single = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert [r["processes"] for r in ranks] == [2, 2] and single["processes"] == 1
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["digest"] != single["digest"]


def test_phase_one_trains_the_encoder_on_decisions_too(dagger_dir):
    """With decision_weight > 0 the decision loss reaches the decision adapter AND the shared vision encoder in
    phase 1; with 0 the decision adapter stays untouched (MindDrive: it is copied from the action one later)."""
    from vla_driver.model.build import build_model
    from vla_driver.rl.sft import SFTConfig, SFTTrainer, load_training_data

    data = load_training_data([dagger_dir])

    def run(weight: float):
        model = build_model(None, seed=0)
        before = {n: p.detach().clone() for n, p in model.llm.named_parameters() if ".decision." in n}
        cfg = SFTConfig(action_steps=3, decision_steps=0, batch_size=4, threads=2, decision_weight=weight,
                        init_decision_from_action=False)
        SFTTrainer(model, data, cfg).train(progress=False)
        decision = {n: p for n, p in model.llm.named_parameters() if ".decision." in n}
        changed = any(not torch.equal(before[n], decision[n]) for n in before)
        return changed, [p.detach().clone() for p in model.vision.parameters()]

    joint_changed, joint_vision = run(1.0)
    action_changed, action_vision = run(0.0)
    assert joint_changed and not action_changed
    assert any(not torch.equal(a, b) for a, b in zip(joint_vision, action_vision, strict=True))
