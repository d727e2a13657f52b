"""Damaged bags: a few hundred mutations of a real recorded MCAP (flipped bytes, truncation, zeroed blocks) read
through every way the commands read bags. Each must read, or be refused with one line naming the bag; no
other exception may escape (a user would see a traceback)."""
import random
import shutil

import pytest

from vla_driver.core.camera_rig import load_rig
from vla_driver.experience.reader import MissingTopicError, TopicMap, iter_messages, read_samples
from vla_driver.harness.record_sim import record_sim
from vla_driver.harness.replay_input import open_bag_input

MUTANTS = 240


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return record_sim(tmp_path_factory.mktemp("src"), "highway", 1.5, "expert", seed=1, rig=load_rig("front"),
                      progress=False)


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.choice(("flip", "truncate", "zero"))
    if kind == "flip":
        for _ in range(rng.randint(1, 20)):
            out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    elif kind == "truncate":
        out = out[: rng.randrange(len(out))]
    else:
        start = rng.randrange(len(out))
        out[start:start + 1024] = bytes(len(out[start:start + 1024]))
    return bytes(out)


@pytest.mark.timeout(900)
def test_no_mutated_bag_gets_a_traceback_out_of_the_readers(recorded, tmp_path):
    mcap = next(recorded.glob("*.mcap"))
    data, rng = mcap.read_bytes(), random.Random(0)
    outcomes = {"read": 0, "refused": 0}
    for i in range(MUTANTS):
        bag = shutil.copytree(recorded, tmp_path / f"m{i}")
        (bag / mcap.name).write_bytes(mutate(data, rng))
        try:
            source = open_bag_input(bag, cameras=("front",))
            assert sum(1 for _ in source.messages()) > 0
            sum(1 for _ in iter_messages(bag))
            read_samples(bag, TopicMap.for_cameras(("front",)), progress=False)
            outcomes["read"] += 1
        except (ValueError, MissingTopicError) as err:  # BagError is a ValueError: one line, naming the bag
            assert "\n" not in str(err) and (bag.name in str(err) or str(bag) in str(err)), str(err)
            outcomes["refused"] += 1
        shutil.rmtree(bag)
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes  # both kinds of bag were made


def test_split_files_without_metadata_are_a_crashed_drive_to_every_reader(recorded, tmp_path, capsys):
    from vla_driver.cli import main as cli

    crashed = shutil.copytree(recorded, tmp_path / "crashed")
    (crashed / "metadata.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="never closed .* logs repair"):
        read_samples(crashed, progress=False)
    assert cli(["replay", str(crashed), "--lockstep", "--out", str(tmp_path / "out")]) == 2
    assert "run `vla-driver logs repair" in capsys.readouterr().err
