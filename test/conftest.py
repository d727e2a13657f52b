"""Shared fixtures: one tiny random checkpoint per session (built by the project's own code)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vla_driver.harness.wait import wait_until as harness_wait_until  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from vla_driver.model.build import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_policy(tiny_checkpoint):
    from vla_driver.runtime.loading import load_policy

    return load_policy(tiny_checkpoint, backend="torch")


@pytest.fixture(scope="session")
def front3_checkpoint(tmp_path_factory):
    """A tiny random checkpoint for the three front cameras of the ``front3`` rig."""
    from vla_driver.core.camera_rig import load_rig
    from vla_driver.model.build import build_random_checkpoint
    from vla_driver.model.config import VLAConfig

    return build_random_checkpoint(tmp_path_factory.mktemp("rig") / "front3", seed=1,
                                   cfg=VLAConfig.for_rig(load_rig("front3")))


@pytest.fixture(scope="session")
def front3_policy(front3_checkpoint):
    from vla_driver.runtime.loading import load_policy

    return load_policy(front3_checkpoint, backend="torch")


@pytest.fixture()
def node_threads():
    """Torch threads as the model nodes set them when they load their own policy (the shared fixtures'
    policies were loaded with the default); restored afterwards."""
    import torch

    from vla_driver.runtime.loading import inference_threads

    before = torch.get_num_threads()
    torch.set_num_threads(inference_threads())
    yield
    torch.set_num_threads(before)


def make_observation(seed: int = 0, speed: float = 10.0, navigation: str = "Go straight for 100m"):
    from vla_driver.core.types import Observation

    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8), speed, navigation)


def wait_until(condition, timeout_s: float = 60.0, poll_s: float = 0.02) -> bool:
    """The harness's wait with a test's patience: a minute, polled every 20 ms."""
    return harness_wait_until(condition, timeout_s, poll_s)
