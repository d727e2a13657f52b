"""A local Hugging Face Qwen2 directory as the base LLM, as the car loads Qwen2.5-0.5B: a stand-in of the same
structure (random weights, Qwen2 tokenizer padded like Qwen2.5's) built, referenced by hash, trained, exported."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla_driver.cli import main
from vla_driver.core.camera_rig import load_rig
from vla_driver.core.types import Observation
from vla_driver.model.build import build_model, build_random_checkpoint
from vla_driver.model.checkpoint import CheckpointError, load_checkpoint, read_manifest, verify_checkpoint
from vla_driver.model.config import VLAConfig
from vla_driver.model.standin import LLM_SIZES, make_llm_standin
from vla_driver.model.tokenizer import default_corpus, load_tokenizer, train_tokenizer
from vla_driver.rl.sft import SFTConfig, train_sft
from vla_driver.runtime.loading import load_policy
from vla_driver.sim.dataset import record_expert_dataset

FRONT = load_rig("front")
TINY = LLM_SIZES["tiny"]


def read_only(path):
    for p in [path, *path.iterdir()]:
        p.chmod(p.stat().st_mode & ~0o222)
    return path


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The tests' stand-in, read-only like the car's model directory."""
    return read_only(make_llm_standin(tmp_path_factory.mktemp("standin") / "llm", "tiny"))


@pytest.fixture(scope="module")
def referencing(standin, tmp_path_factory):
    cfg = VLAConfig.for_rig(FRONT, llm_pretrained_dir=str(standin))
    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "on_standin", cfg=cfg)


def table(model, seed=0):
    from vla_driver.runtime.policy import TorchPolicy

    obs = Observation(np.random.default_rng(seed).integers(0, 255, (1, 96, 128, 3), dtype=np.uint8), 9.0,
                      "Turn left in 50m")
    return TorchPolicy(model).decide(obs).probs


def test_the_standin_is_a_qwen2_directory_whose_tokenizer_encodes_as_the_projects(standin):
    config = json.loads((standin / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["vocab_size"]) == ("qwen2", TINY.hidden, TINY.vocab_size)
    assert config["tie_word_embeddings"] and config["dtype"] == "bfloat16"
    tokenizer = load_tokenizer(standin)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert len(tokenizer) == TINY.vocab_size - TINY.padding_rows  # like Qwen2.5: padded embedding rows
    text = "Speed: 12.3 m/s. Navigation: Turn left in 50m"
    assert tokenizer.encode(text) == train_tokenizer(default_corpus(), 800).encode(text)
    assert LLM_SIZES["0.5b"].vocab_size - LLM_SIZES["0.5b"].padding_rows == 151665  # Qwen2.5's tokenizer


def test_a_read_only_base_is_referenced_by_hash_and_the_policy_tokens_take_its_padding_rows(standin, referencing):
    manifest = read_manifest(referencing)
    assert manifest["base"]["path"] == str(standin)
    assert set(manifest["base"]["files"]) == {"config.json", "model.safetensors"}
    assert not (referencing / "base" / "model.safetensors").exists()
    first, end = manifest["base"]["added_rows"]
    assert first == TINY.vocab_size - TINY.padding_rows and first < end <= TINY.vocab_size  # no resize needed
    model = load_checkpoint(referencing)
    assert model.llm.get_input_embeddings().num_embeddings == TINY.vocab_size
    weight = model.llm.get_input_embeddings().weight.detach()
    pretrained = load_file(str(standin / "model.safetensors"))["model.embed_tokens.weight"].float()
    assert torch.equal(weight[:first], pretrained[:first])
    assert int(model.speed_ids.min()) >= first and int(model.path_ids.max()) < end
    pieces = load_tokenizer(standin).encode(" left turn", add_special_tokens=False)
    assert torch.allclose(weight[model.tokenizer.convert_tokens_to_ids("LEFT_TURN")], pretrained[pieces].mean(0))
    words = weight[torch.cat([model.speed_ids, model.path_ids])]
    assert torch.cdist(words, words).fill_diagonal_(1.0).min() > 0  # every candidate word starts apart


def test_a_self_contained_copy_decides_exactly_as_the_referencing_checkpoint(standin, referencing, tmp_path):
    cfg = VLAConfig.for_rig(FRONT, llm_pretrained_dir=str(standin))
    copy = build_random_checkpoint(tmp_path / "copy", cfg=cfg, self_contained=True)
    assert "base" not in read_manifest(copy) and (copy / "base" / "model.safetensors").is_file()
    fresh = build_model(cfg).eval()
    with torch.no_grad():
        expected = table(fresh)
    assert np.allclose(table(load_checkpoint(referencing)), expected, atol=1e-6)
    assert np.allclose(table(load_checkpoint(copy)), expected, atol=1e-6)


def test_a_changed_or_missing_base_is_refused_in_one_line(standin, tmp_path, capsys):
    base = shutil.copytree(standin, tmp_path / "llm")
    cfg = VLAConfig.for_rig(FRONT, llm_pretrained_dir=str(base))
    ckpt = build_random_checkpoint(tmp_path / "ckpt", cfg=cfg, self_contained=False)
    weights = base / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not the referenced base"):
        load_checkpoint(ckpt)
    base.rename(tmp_path / "moved")
    assert main(["inspect", str(ckpt)]) == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith("REFUSED:") and "is not there" in out and len(out.splitlines()) == 1


def test_training_on_a_pretrained_base_moves_the_adapters_and_keeps_the_reference(standin, referencing, tmp_path):
    record_expert_dataset(tmp_path / "data", ["merge"], [0], rig=FRONT, progress=False)
    train_sft(tmp_path / "data", tmp_path / "tuned", base_checkpoint=str(referencing),
              cfg=SFTConfig(action_steps=2, decision_steps=2, batch_size=4), progress=False)
    before, after = read_manifest(referencing), read_manifest(tmp_path / "tuned")
    assert after["base"] == before["base"]  # the 1 GB base is never copied into a fine-tune
    verify_checkpoint(tmp_path / "tuned")
    lora = load_file(str(tmp_path / "tuned" / "adapters" / "decision" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items())  # started at zero
    assert not np.allclose(table(load_checkpoint(tmp_path / "tuned")), table(load_checkpoint(referencing)))


def test_gradient_checkpointing_trains_the_same_adapters(referencing, tmp_path):
    record_expert_dataset(tmp_path / "data", ["merge"], [0], rig=FRONT, progress=False)
    for name, recompute in (("kept", False), ("recomputed", True)):
        train_sft(tmp_path / "data", tmp_path / name, base_checkpoint=str(referencing), progress=False,
                  cfg=SFTConfig(action_steps=2, decision_steps=1, batch_size=4, gradient_checkpointing=recompute))
    for adapter in ("action", "decision"):
        kept, recomputed = (load_file(str(tmp_path / n / "adapters" / adapter / "adapter_model.safetensors"))
                            for n in ("kept", "recomputed"))
        assert all(torch.allclose(kept[k], recomputed[k], atol=1e-6) for k in kept), adapter


def test_onnx_runtime_agrees_with_torch_on_a_pretrained_base(referencing):
    torch_policy, ort_policy = load_policy(referencing, "torch"), load_policy(referencing, "onnxruntime")
    assert ort_policy.backend_name == "onnxruntime"
    for seed in range(3):
        obs = Observation(np.random.default_rng(seed).integers(0, 255, (1, 96, 128, 3), dtype=np.uint8),
                          5.0 + seed, "Go straight for 100m")
        a, b = torch_policy.decide(obs), ort_policy.decide(obs)
        assert a.decision == b.decision and np.allclose(a.probs, b.probs, atol=1e-4)
        assert np.abs(torch_policy.plan(obs, a.decision).poses - ort_policy.plan(obs, a.decision).poses).max() < 1e-3


def test_the_cli_writes_a_standin_and_a_checkpoint_on_it(tmp_path, capsys):
    assert main(["standin", "--size", "tiny", "--out", str(tmp_path / "m")]) == 0
    assert "Qwen2 tiny" in capsys.readouterr().out
    read_only(tmp_path / "m" / "llm")
    assert main(["init-checkpoint", "--llm-dir", str(tmp_path / "m" / "llm"), "--out", str(tmp_path / "c")]) == 0
    assert "base referenced by hash" in capsys.readouterr().out
    assert main(["init-checkpoint", "--llm-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "d")]) == 1
    assert "no config.json there" in capsys.readouterr().out and not (tmp_path / "d").exists()


def test_a_checkpoint_with_a_pretrained_vision_tower_loads_without_the_towers_directory(standin, tmp_path):
    from vla_driver.model.standin import make_vision_standin

    tower = make_vision_standin(tmp_path / "siglip", "tiny")
    cfg = VLAConfig.for_rig(FRONT, llm_pretrained_dir=str(standin))
    cfg.vision.pretrained_dir = str(tower)
    ckpt = build_random_checkpoint(tmp_path / "ckpt", cfg=cfg)
    assert read_manifest(ckpt)["config"]["vision"]["tower_config"]["model_type"] == "siglip_vision_model"
    pixels = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        before = load_checkpoint(ckpt).vision(pixels)
        shutil.rmtree(tower)  # another machine: the shape comes from the manifest, the weights from the checkpoint
        assert torch.equal(load_checkpoint(ckpt).vision(pixels), before)
