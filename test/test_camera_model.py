"""A model trained for a camera rig: it reads every camera of the rig, native frames are fitted to its input
keeping their geometry, its exported graphs agree with torch, and data and checkpoints carry the rig."""
import numpy as np
import pytest

from vla_driver.core.camera_rig import fit_to_model, load_rig
from vla_driver.core.types import Observation
from vla_driver.experience.reader import MissingTopicError, TopicMap, read_samples
from vla_driver.harness.record_sim import record_sim
from vla_driver.model.checkpoint import read_manifest
from vla_driver.model.config import VLAConfig
from vla_driver.rl.sft import SFTConfig, train_sft
from vla_driver.runtime.loading import load_policy
from vla_driver.sim.dataset import record_expert_dataset
from vla_driver.sim.highway import DrivingSim
from vla_driver.sim.shards import load_dataset

FRONT3 = load_rig("front3")


def native_views(seed: int = 0) -> np.ndarray:
    cams = FRONT3.cameras
    return np.random.default_rng(seed).integers(0, 255, (len(cams), cams[0].height, cams[0].width, 3), dtype=np.uint8)


def test_the_manifest_records_the_rig_and_every_camera_becomes_tokens(front3_checkpoint):
    config = read_manifest(front3_checkpoint)["config"]
    assert config["rig"]["name"] == "front3" and [c["name"] for c in config["rig"]["cameras"]] == list(FRONT3.names)
    cfg = VLAConfig.from_dict(config)
    assert cfg.views == 3 and cfg.num_image_tokens == 3 * cfg.tokens_per_view
    assert (cfg.vision.image_height, cfg.vision.image_width) == (FRONT3.model_height, FRONT3.model_width)


def test_native_frames_are_fitted_in_one_place_and_onnx_runtime_agrees_with_torch(front3_checkpoint):
    torch_policy = load_policy(front3_checkpoint, "torch")
    ort_policy = load_policy(front3_checkpoint, "onnxruntime")
    assert ort_policy.backend_name == "onnxruntime"
    views = native_views()
    native = Observation(views, 8.0, "Go straight for 100m")
    fitted = Observation(np.stack([fit_to_model(v, FRONT3) for v in views]), 8.0, "Go straight for 100m")
    assert np.array_equal(torch_policy.encoder.images([native]), torch_policy.encoder.images([fitted]))
    a, b = torch_policy.decide(native), ort_policy.decide(native)
    assert a.decision == b.decision and np.allclose(a.probs, b.probs, atol=1e-4)
    assert np.abs(torch_policy.plan(native, a.decision).poses - ort_policy.plan(native, a.decision).poses).max() < 1e-3
    # the cameras are told apart: swapping two of them changes what the model sees
    swapped = Observation(views[[1, 0, 2]], 8.0, "Go straight for 100m")
    assert not np.allclose(torch_policy.decide(swapped).probs, a.probs)


def test_a_frame_set_that_is_not_the_rig_is_refused_with_the_cameras_it_needs(front3_checkpoint):
    policy = load_policy(front3_checkpoint, "torch")
    with pytest.raises(ValueError, match=r"3 view\(s\) of the front3 rig \(front_left, front, front_right\)"):
        policy.decide(Observation(native_views()[0], 8.0, "Go straight"))


def test_the_simulator_renders_the_rig_and_appearance_varies_by_episode_only_when_asked():
    front = load_rig("front")
    plain = DrivingSim("highway", seed=3, rig=front)
    varied = DrivingSim("highway", seed=3, rig=front, appearance="random")
    try:
        image = plain.observation().image
        assert image.shape == (1, front.model_height, front.model_width, 3)
        assert np.array_equal(image, plain.reset(3).image)  # deterministic
        assert not np.array_equal(image, varied.observation().image)
        assert np.array_equal(varied.observation().image, varied.reset(3).image)  # same seed, same look
        assert not np.array_equal(varied.observation().image, varied.reset(4).image)
    finally:
        plain.close()
        varied.close()


def test_data_carries_its_rig_and_training_refuses_a_model_for_other_cameras(tmp_path, front3_checkpoint):
    meta = record_expert_dataset(tmp_path / "front", ["merge"], [0], rig=load_rig("front"), progress=False)
    data = load_dataset(tmp_path / "front")
    assert meta["rig"]["name"] == "front" and data["image"].shape[1:] == (1, 96, 128, 3)
    with pytest.raises(ValueError, match="drives from the front3 rig, the data was recorded with the front rig"):
        train_sft(tmp_path / "front", tmp_path / "out", base_checkpoint=str(front3_checkpoint),
                  cfg=SFTConfig(action_steps=1, decision_steps=1), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_rig_drive_is_logged_one_topic_per_camera_and_read_back_as_camera_sets(tmp_path):
    bag = record_sim(tmp_path / "drive", "highway", 6.0, "expert", 0, rig=FRONT3, progress=False)
    samples = read_samples(bag, TopicMap.for_cameras(FRONT3.names), progress=False)
    assert samples and all(s.image.shape == (3, FRONT3.model_height, FRONT3.model_width, 3) for s in samples)
    front_only = read_samples(bag, TopicMap.for_cameras(("front",)), progress=False)
    assert [s.stamp for s in front_only] == [s.stamp for s in samples]
    assert np.array_equal(front_only[0].image, samples[0].image[1])  # the front camera is the rig's second
    with pytest.raises(MissingTopicError, match="/camera/image_raw"):
        read_samples(bag, progress=False)  # a top-down model's map finds no camera of its own


def test_held_out_looks_lie_outside_everything_training_draws():
    from vla_driver.sim.camera_render import Appearance

    for seed in range(200):
        train = Appearance.sample(np.random.default_rng([seed, 11]))
        held = Appearance.held_out(np.random.default_rng([seed, 11]))
        assert 0.65 <= train.marking_brightness and held.marking_brightness < 0.65
        assert 20.0 <= train.light_elevation_deg and held.light_elevation_deg < 20.0
        assert abs(train.camera_dpitch_deg) <= 1.5 < abs(held.camera_dpitch_deg)
        assert not (0.10 <= held.marking_width_m <= 0.22) and not (0.3 <= held.ambient <= 0.65)
    front = load_rig("front")
    held_sim = DrivingSim("merge", seed=4, rig=front, appearance="held_out")
    plain = DrivingSim("merge", seed=4, rig=front)
    try:
        image = held_sim.observation().image
        assert not np.array_equal(image, plain.observation().image)
        assert np.array_equal(image, held_sim.reset(4).image)  # one look per seed
    finally:
        held_sim.close()
        plain.close()
    with pytest.raises(ValueError, match="appearance must be one of"):
        DrivingSim("merge", seed=4, rig=front, appearance="sepia")


def test_the_backend_benchmark_times_the_frames_a_rig_model_sees(front3_checkpoint, front3_policy):
    from vla_driver.bench.backends import frame_for_bench, run

    assert frame_for_bench(front3_policy).image.shape == (3, FRONT3.model_height, FRONT3.model_width, 3)
    record = run(str(front3_checkpoint), iters=2, threads=1)  # each backend in its own process
    assert record["torch_cycle_ms_p50"] > 0 and record["ort_cycle_ms_p50"] > 0
