"""Frame history: one rule picks the past camera sets a multi-frame model sees, in the simulator, the nodes'
camera sets and the samples cut from bags."""
import numpy as np
import pytest

from vla_driver.core.camera_rig import load_rig
from vla_driver.core.frame_history import FrameHistory, history_picks
from vla_driver.experience.reader import TopicMap, read_samples
from vla_driver.harness.record_sim import record_sim
from vla_driver.nodes.camera_set import CameraSet
from vla_driver.nodes.convert import rgb_to_image
from vla_driver.sim.highway import DrivingSim

FRONT = load_rig("front")


def camera_set(value: int, cameras: int = 2) -> np.ndarray:
    """A (cameras, 2, 2, 3) set whose camera c holds the value ``value * 10 + c`` everywhere."""
    return np.stack([np.full((2, 2, 3), value * 10 + c, np.uint8) for c in range(cameras)])


def test_the_model_sees_sets_one_period_apart_oldest_first_camera_major():
    stamps = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert history_picks(stamps, 0.6, 3) == [0, 1, 6]  # -1.0 s: none yet, the oldest stands in; -0.5 s: 0.1
    assert history_picks(stamps, 0.54, 2) == [0, 5]  # 0.04 s is within the slack of 0.0: picked
    history = FrameHistory(frames=2)
    for k, t in enumerate(stamps):
        history.push(camera_set(k), t)
    views = history.views()
    # camera 0 at 0.1 s then at 0.6 s, then camera 1 at the same two instants
    assert [int(v[0, 0, 0]) for v in views] == [10, 60, 11, 61]


def test_only_the_sets_still_needed_are_held_and_time_going_back_starts_afresh():
    history = FrameHistory(frames=4)  # 1.5 s of history
    for k in range(300):  # 30 s at 10 Hz
        history.push(camera_set(k % 25), k * 0.1)
    assert len(history._sets) <= 17  # 1.5 s at 10 Hz and the one before it
    history.push(camera_set(1), 0.0)  # a new episode
    assert [int(v[0, 0, 0]) for v in history.views()] == [10, 10, 10, 10, 11, 11, 11, 11]
    with pytest.raises(ValueError):
        FrameHistory(frames=0)


def test_the_simulator_and_the_nodes_camera_set_see_the_same_history():
    """The simulator's observations (training, evaluation) and the nodes' camera sets (the car, replay) fed the
    same frames give the model the same views."""
    sim = DrivingSim("highway", seed=3, rig=FRONT, history=2, duration_s=5.0)
    plain = DrivingSim("highway", seed=3, rig=FRONT, duration_s=5.0)
    cameras = CameraSet(FRONT, history=2)
    first = sim.observation().image
    assert first.shape == (2, FRONT.model_height, FRONT.model_width, 3)
    assert np.array_equal(first[0], first[1])  # no history yet: the first frame stands in
    frames = []
    for _ in range(8):
        frame = plain.observation().image[0]
        frames.append(frame)
        cameras.on_frame("front", rgb_to_image(frame, plain.time))
        seen = sim.observation().image
        assert np.array_equal(seen, cameras.synced[0])
        sim.step(8.0, 0.0)
        plain.step(8.0, 0.0)
    # at 0.7 s the older view is the frame of 0.2 s, the newer the current one
    assert np.array_equal(seen[0], frames[2]) and np.array_equal(seen[1], frames[7])
    assert not np.array_equal(seen[0], seen[1])
    sim.close()
    plain.close()


def test_a_camera_set_with_history_holds_native_frames_at_the_model_size():
    cameras = CameraSet(FRONT, history=3)
    cam = FRONT.cameras[0]
    native = np.random.default_rng(0).integers(0, 255, (cam.height, cam.width, 3), dtype=np.uint8)
    for k in range(12):
        cameras.on_frame("front", rgb_to_image(native, 10.0 + 0.1 * k))
    views, stamp = cameras.synced
    assert views.shape == (3, FRONT.model_height, FRONT.model_width, 3) and stamp == pytest.approx(11.1)
    assert all(s.shape[1:3] == (FRONT.model_height, FRONT.model_width) for s in cameras.history._sets)


def test_samples_cut_from_a_bag_carry_the_frame_history(tmp_path):
    bag = record_sim(tmp_path / "drive", "highway", 6.0, "expert", 0, rig=FRONT, progress=False)
    single = read_samples(bag, TopicMap.for_cameras(FRONT.names), progress=False)
    double = read_samples(bag, TopicMap.for_cameras(FRONT.names), history=2, progress=False)
    assert [s.stamp for s in single] == [s.stamp for s in double] and len(single) >= 4
    by_stamp = {round(s.image_stamp, 3): s.image for s in single}
    for s in double[1:]:
        assert s.image.shape == (2, FRONT.model_height, FRONT.model_width, 3)
        assert np.array_equal(s.image[1], by_stamp[round(s.image_stamp, 3)])
        assert np.array_equal(s.image[0], by_stamp[round(s.image_stamp - 0.5, 3)])  # samples are 0.5 s apart
    assert np.array_equal(double[0].image[0], double[0].image[1])  # the first sample has no past yet


def test_a_two_frame_model_trains_on_two_frame_data_drives_and_its_graphs_agree(tmp_path):
    from vla_driver.rl.sft import SFTConfig, train_sft
    from vla_driver.runtime.loading import load_policy
    from vla_driver.sim.closed_loop import run_episode
    from vla_driver.sim.dataset import record_expert_dataset
    from vla_driver.sim.shards import load_dataset

    meta = record_expert_dataset(tmp_path / "data", ["merge"], [0], rig=FRONT, history=2, progress=False)
    assert meta["history"] == 2 and load_dataset(tmp_path / "data")["image"].shape[1:] == (2, 96, 128, 3)
    one_frame = record_expert_dataset(tmp_path / "one", ["merge"], [1], rig=FRONT, progress=False)
    assert one_frame["history"] == 1
    with pytest.raises(ValueError, match="different frame histories"):
        train_sft([tmp_path / "data", tmp_path / "one"], tmp_path / "mixed", cfg=SFTConfig(action_steps=1,
                  decision_steps=1), progress=False)
    train_sft(tmp_path / "data", tmp_path / "ckpt", cfg=SFTConfig(action_steps=2, decision_steps=1, batch_size=4),
              progress=False)
    # which frame each view is: learned, saved and loaded back
    from safetensors.torch import load_file

    from vla_driver.model.checkpoint import load_checkpoint

    embed = load_file(str(tmp_path / "ckpt" / "modules.safetensors"))["view_embed"]
    assert embed.shape[0] == 2 and float(embed.abs().sum()) > 0 and not bool((embed[0] == embed[1]).all())
    assert bool((load_checkpoint(tmp_path / "ckpt").view_embed.detach() == embed).all())
    torch_policy = load_policy(tmp_path / "ckpt", "torch")
    assert torch_policy.history == 2 and torch_policy.rig.name == "front"
    result, _ = run_episode(torch_policy, "highway", 7)  # the simulator keeps the history the model needs
    assert result.duration_s > 0 and result.termination != "error"
    sim = DrivingSim("highway", seed=7, rig=FRONT, history=2)
    obs = sim.observation()
    ort_policy = load_policy(tmp_path / "ckpt", "onnxruntime")
    a, b = torch_policy.decide(obs), ort_policy.decide(obs)
    assert a.decision == b.decision
    plan_a, plan_b = torch_policy.plan(obs, a.decision), ort_policy.plan(obs, a.decision)
    assert np.abs(plan_a.poses - plan_b.poses).max() < 1e-3
    with pytest.raises(ValueError, match="takes 2 view"):
        torch_policy.decide(DrivingSim("highway", seed=7, rig=FRONT).observation())  # one frame is refused
    sim.close()

    # a one-frame model fine-tuned on the two-frame data: refused, unless asked to widen its history
    train_sft(tmp_path / "one", tmp_path / "one_ckpt", cfg=SFTConfig(action_steps=1, decision_steps=1), progress=False)
    with pytest.raises(ValueError, match="--widen-history"):
        train_sft(tmp_path / "data", tmp_path / "refused", base_checkpoint=str(tmp_path / "one_ckpt"),
                  cfg=SFTConfig(action_steps=1, decision_steps=1), progress=False)
    train_sft(tmp_path / "data", tmp_path / "widened", base_checkpoint=str(tmp_path / "one_ckpt"),
              cfg=SFTConfig(action_steps=1, decision_steps=1, widen_history=True), progress=False)
    widened = load_checkpoint(tmp_path / "widened")
    assert widened.cfg.history == 2 and tuple(widened.view_embed.shape)[0] == 2
