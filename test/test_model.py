"""The VLA policy: single-pass scoring is exact, adapters are separate, checkpoints are safe."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_observation

from vla_driver.core.types import Observation
from vla_driver.core.vocabulary import Decision
from vla_driver.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint


def test_single_pass_equals_per_candidate_reference(tiny_policy):
    observations = [make_observation(i, speed=5.0 + 7 * i, navigation="Turn left in 25m" + " then go" * i)
                    for i in range(3)]
    table = tiny_policy.decision_table(observations)  # one right-padded batch, one forward pass
    assert table.shape == (3, 4, 5)
    np.testing.assert_allclose(np.exp(table).sum(axis=(1, 2)), 1.0, atol=1e-5)
    enc, model = tiny_policy.encoder, tiny_policy.model
    with torch.inference_mode():
        for i, obs in enumerate(observations):
            ids = torch.tensor([enc.decision_rows([obs])[0]])
            ref = model.reference_log_probs(enc.images([obs]), enc.ego([obs]), ids).numpy()
            np.testing.assert_allclose(table[i], ref, atol=2e-5)
    assert not np.allclose(table[0], table[1])  # the input matters


def test_decide_returns_table_argmax_sample_and_log_prob(tiny_policy):
    obs = make_observation(1)
    result = tiny_policy.decide(obs)
    vocab = tiny_policy.vocab
    i, j = vocab.speed_index(result.decision.speed), vocab.path_index(result.decision.path)
    assert result.probs[i, j] == result.probs.max()
    assert np.isclose(np.exp(result.log_prob), result.probs[i, j], rtol=1e-4)
    rng = np.random.default_rng(0)
    picks = {tiny_policy.decide(obs, sample=True, rng=rng).decision for _ in range(40)}
    assert len(picks) > 1  # sampling explores the table
    js = result.to_json_dict(vocab)
    assert len(js["probabilities"]) == 20 and json.dumps(js)


def test_slow_thinking_answer_always_in_vocabulary(tiny_policy):
    result = tiny_policy.decide(make_observation(2), think=True)
    assert result.decision.speed in tiny_policy.vocab.speeds
    assert result.decision.path in tiny_policy.vocab.paths
    assert isinstance(result.decision.reasoning, str)


def test_adapters_give_different_outputs(tiny_policy):
    obs = make_observation(3)
    enc, model = tiny_policy.encoder, tiny_policy.model
    ids, lengths = enc.pad(enc.decision_rows([obs]))
    outs = {}
    with torch.inference_mode():
        for name in ("decision", "action"):
            model.select_adapter(name)
            outs[name] = model.decision_log_probs(enc.images([obs]), enc.ego([obs]), ids, lengths)
    assert not torch.allclose(outs["decision"], outs["action"])


def lora_params(model, adapter):
    return {k: v.detach().clone() for k, v in model.named_parameters() if f".{adapter}." in k and "lora_" in k}


@pytest.mark.parametrize("active,other", [("decision", "action"), ("action", "decision")])
def test_only_active_adapter_trains(tiny_checkpoint, active, other):
    model = load_checkpoint(tiny_checkpoint).train()
    from vla_driver.runtime.policy import TorchPolicy

    enc = TorchPolicy(model).encoder
    obs = [make_observation(4), make_observation(5, speed=3.0)]
    before_active, before_other = lora_params(model, active), lora_params(model, other)
    model.select_adapter(active)
    trainable = [p for p in model.llm.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in model.llm.parameters()) for p in trainable)
    opt = torch.optim.SGD(trainable, lr=0.5)
    if active == "decision":
        ids, lengths = enc.pad(enc.decision_rows(obs))
        loss = -model.decision_log_probs(enc.images(obs), enc.ego(obs), ids, lengths)[:, 0, 0].mean()
    else:
        ids, lengths = enc.pad(enc.action_rows(obs, [Decision("KEEP", "STRAIGHT")] * 2))
        loss = model.trajectories(enc.images(obs), enc.ego(obs), ids, lengths).pow(2).mean()
    loss.backward()
    opt.step()
    after_active, after_other = lora_params(model, active), lora_params(model, other)
    assert any(not torch.equal(before_active[k], after_active[k]) for k in before_active)
    assert all(torch.equal(before_other[k], after_other[k]) for k in before_other)


def test_trajectory_shapes_and_frame(tiny_policy):
    obs = make_observation(6, speed=12.0)
    modes = tiny_policy.trajectory_modes([obs], [Decision("KEEP", "STRAIGHT")])
    assert modes.shape == (1, 4, 6, 3)
    traj = tiny_policy.plan(obs, Decision("DECELERATE", "STRAIGHT"))
    assert traj.poses.shape == (6, 3) and np.all(np.isfinite(traj.poses))
    # With a zeroed head output the plan is the constant-velocity rollout along ego +x.
    model = tiny_policy.model
    last = model.traj_head[-1]
    saved = (last.weight.detach().clone(), last.bias.detach().clone())
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    try:
        flat = tiny_policy.trajectory_modes([obs], [Decision("KEEP", "STRAIGHT")])[0]
    finally:
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])
    np.testing.assert_allclose(flat[:, :, 0], np.tile(12.0 * tiny_policy.spec.times, (4, 1)), rtol=1e-5)
    np.testing.assert_allclose(flat[:, :, 1:], 0.0, atol=1e-6)


def test_save_load_round_trip(tiny_checkpoint, tmp_path):
    model = load_checkpoint(tiny_checkpoint)
    out = save_checkpoint(model, tmp_path / "copy", lineage={"parent": "tiny"})
    again = load_checkpoint(out)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vocabulary"]["speeds"][0] == "KEEP" and manifest["trajectory"]["num_waypoints"] == 6
    assert set(manifest["adapters"]) == {"decision", "action"}
    assert all(f.endswith((".safetensors", ".json")) for f in manifest["files"])
    assert manifest["lineage"] == {"parent": "tiny"}
    # saved again from elsewhere: the same files, so the same version; adapters name the checkpoint's own base
    moved = save_checkpoint(again, tmp_path / "elsewhere" / "copy2", lineage={"parent": "tiny"})
    assert json.loads((moved / "manifest.json").read_text())["model_version"] == manifest["model_version"]
    adapter = json.loads((moved / "adapters" / "action" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "base" and adapter["target_modules"] == sorted(adapter["target_modules"])


def test_tampered_and_pickle_checkpoints_refused(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    target = bad / "adapters" / "decision" / "adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="adapter_model.safetensors.*sha256"):
        load_checkpoint(bad)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, pickled)
    torch.save({"x": torch.zeros(1)}, pickled / "base" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        verify_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="manifest"):
        load_checkpoint(tmp_path)


def test_tokenizer_ids_stable_under_qwen2_loading(tiny_checkpoint, tmp_path):
    """transformers 5 swaps in Qwen2's pre-tokenizer when it sees a qwen2 config: ids must not change."""
    from transformers import AutoTokenizer

    from vla_driver.model.tokenizer import load_tokenizer

    ours = load_tokenizer(tiny_checkpoint / "tokenizer")
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_checkpoint / "tokenizer", mixed)
    shutil.copy(tiny_checkpoint / "base" / "config.json", mixed / "config.json")
    theirs = AutoTokenizer.from_pretrained(mixed, local_files_only=True)
    text = "<image><ego>Speed: 12.5 m/s. Navigation: Turn left in 25m's.\n<think>ok</think><answer>KEEP, LEFT_TURN</answer>"
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)


def test_prompt_carries_speed_and_navigation(tiny_policy):
    obs = Observation(np.zeros((64, 128, 3), np.uint8), 7.25, "Take the second exit at the roundabout in 30m")
    text = tiny_policy.model.tokenizer.decode(tiny_policy.encoder.prompt_ids(obs))
    assert "7.2 m/s" in text and "second exit" in text


def test_embedded_default_checkpoint_is_intact_and_trained():
    from vla_driver.runtime.loading import DEFAULT_CHECKPOINT

    manifest = verify_checkpoint(DEFAULT_CHECKPOINT)
    # online RL on top of an imitation-trained model, for CARLA's front camera
    assert manifest["lineage"]["kind"] == "grpo_online" and manifest["lineage"]["parent"]
    assert manifest["metrics"]["train_rl"]["iterations"] >= 8
    assert manifest["config"]["rig"]["name"] == "front" and manifest["config"]["history"] == 1
    assert set(manifest["adapters"]) == {"decision", "action"}


def test_decision_bench_generates_each_variants_tokens(tiny_checkpoint, capsys):
    from vla_driver.bench.decision import run

    record = run(str(tiny_checkpoint), iters=2, threads=1)
    out = capsys.readouterr().out
    assert '"bench": "decision"' in out.splitlines()[-1]
    # the whole response adds the three forced tags to the answer words
    assert record["response_tokens"] == record["answer_tokens"] + 3
    assert all(record[k] > 0 for k in ("single_pass_ms_p50", "generate_whole_response_ms_p50", "prefill_ms_p50",
                                       "decode_step_ms_p50"))
