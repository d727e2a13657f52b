"""Damaged bags: a few hundred mutations of a real recorded MCAP (flipped bytes, truncation, zeroed blocks) read
through every way the commands read bags. Each must read, or be refused with one line naming the bag; no
other exception may escape (a user would see a traceback). A damaged chunk of an indexed file is skipped and
counted: the rest of the bag still reads."""
import logging
import random
import re
import shutil

import pytest
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.rosbag2 import Reader

from vla_driver.cli import main as cli
from vla_driver.core.camera_rig import load_rig
from vla_driver.experience.bag_open import BagError, open_bags
from vla_driver.experience.reader import MissingTopicError, TopicMap, iter_messages, read_samples
from vla_driver.experience.repair import complete_records
from vla_driver.harness.record_sim import record_sim
from vla_driver.harness.replay_input import open_bag_input

MUTANTS = 240
CHUNK_OPCODE = 0x06


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Our logger's layout (rosbags' writer): one uncompressed chunk without a CRC for this short drive."""
    return record_sim(tmp_path_factory.mktemp("src"), "highway", 1.5, "expert", seed=1, rig=load_rig("front"),
                      progress=False)


@pytest.fixture(scope="module")
def chunked(recorded, tmp_path_factory):
    """The same drive in the layout of ROS's rosbag2 (the mcap library's writer: zstd chunks with CRCs), in
    small chunks so that it spans many."""
    return rewrite_in_chunks(recorded, tmp_path_factory.mktemp("chunked") / recorded.name)


def rewrite_in_chunks(bag, out, chunk_size: int = 48 * 1024):
    """``bag`` rewritten by the mcap library's writer in chunks of about ``chunk_size`` bytes; same metadata.yaml."""
    shutil.copytree(bag, out)
    mcap = next(out.glob("*.mcap"))
    with Reader(bag) as reader, mcap.open("wb") as stream:
        writer = McapWriter(stream, chunk_size=chunk_size, compression=CompressionType.ZSTD)
        writer.start(profile="ros2", library="test_bag_fuzz")
        channels = {}
        for conn in reader.connections:
            schema = writer.register_schema(conn.msgtype, "ros2msg", conn.msgdef.data.encode())
            channels[conn.id] = writer.register_channel(conn.topic, "cdr", schema, {"offered_qos_profiles": ""})
        for conn, t_ns, raw in reader.messages():
            writer.add_message(channels[conn.id], t_ns, bytes(raw), t_ns)
        writer.finish()
    return out


def chunk_offsets(mcap) -> list[int]:
    """Byte offset of every chunk record in an MCAP file."""
    offsets, offset = [], 8
    for opcode, body in complete_records(mcap):
        if opcode == CHUNK_OPCODE:
            offsets.append(offset)
        offset += 9 + len(body)
    return offsets


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
def test_no_mutated_bag_gets_a_traceback_out_of_the_readers(recorded, chunked, tmp_path):
    """Half the mutants in each layout; a mutant with a damaged chunk of many is read without it."""
    sources = [(bag, next(bag.glob("*.mcap"))) for bag in (recorded, chunked)]
    data, rng = [mcap.read_bytes() for _, mcap in sources], random.Random(0)
    outcomes = {"read": 0, "read_skipping_damaged_chunks": 0, "refused": 0}
    for i in range(MUTANTS):
        source_bag, mcap = sources[i % 2]
        bag = shutil.copytree(source_bag, tmp_path / f"m{i}")
        (bag / mcap.name).write_bytes(mutate(data[i % 2], rng))
        try:
            source = open_bag_input(bag, cameras=("front",))
            assert sum(1 for _ in source.messages()) > 0
            sum(1 for _ in iter_messages(bag))
            read_samples(bag, TopicMap.for_cameras(("front",)), progress=False)
            outcomes["read"] += 1
            outcomes["read_skipping_damaged_chunks"] += source.skipped["damaged_chunks"] > 0
        except (ValueError, MissingTopicError) as err:  # BagError is a ValueError: one line, naming the bag
            assert "\n" not in str(err) and (bag.name in str(err) or str(bag) in str(err)), str(err)
            outcomes["refused"] += 1
        shutil.rmtree(bag)
    # every kind of outcome was made: read whole, read without its damaged chunks, refused
    assert outcomes["read"] > outcomes["read_skipping_damaged_chunks"] > 0 and outcomes["refused"] > 0, outcomes


def test_a_damaged_chunk_is_skipped_and_counted_once_by_every_reader(chunked, tmp_path, caplog):
    bag = shutil.copytree(chunked, tmp_path / "damaged")
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    offsets = chunk_offsets(mcap)
    assert len(offsets) >= 8
    with open_bags([chunked]) as reader:
        whole = [t for _, t, _ in reader.messages()]
    third = offsets[2]
    data[third + 200: third + 220] = bytes(20)  # inside its compressed data: the CRC no longer matches
    mcap.write_bytes(bytes(data))

    with open_bags([bag]) as reader:
        for _ in range(2):  # each pass skips it again; it is counted once
            read = [t for _, t, _ in reader.messages()]
            assert 0 < len(read) < len(whole) and read == sorted(read) and set(read) < set(whole)
        assert reader.skipped == {"damaged_chunks": 1}
        assert reader.left_out.note() == "skipped 1 damaged chunk (messages lost)"
    with caplog.at_level(logging.INFO, logger="vla_driver.experience.reader"):
        samples = read_samples(bag, TopicMap.for_cameras(("front",)), horizon_s=0.5, progress=False)
    assert samples and "skipped 1 damaged chunk" in caplog.text and "'damaged_chunks': 1" in caplog.text
    source = open_bag_input(bag, cameras=("front",))
    assert sum(1 for _ in source.messages()) > 0 and source.skipped["damaged_chunks"] == 1


def test_a_file_cut_short_is_refused_with_the_repair_that_reads_it_again(chunked, tmp_path, capsys):
    bag = shutil.copytree(chunked, tmp_path / "cut")
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: chunk_offsets(mcap)[5] + 100])  # a disk filled up mid-chunk
    with pytest.raises(BagError, match=f"is cut short .* run `vla-driver logs repair {bag}`"):
        read_samples(bag, progress=False)
    assert cli(["logs", "repair", str(bag)]) == 0
    assert "cut: repaired" in capsys.readouterr().out
    with open_bags([bag]) as reader:
        assert sum(1 for _ in reader.messages()) > 0 and not reader.skipped


def test_split_files_without_metadata_are_a_crashed_drive_to_every_reader(recorded, tmp_path, capsys):
    crashed = shutil.copytree(recorded, tmp_path / "crashed")
    (crashed / "metadata.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="never closed .* logs repair"):
        read_samples(crashed, progress=False)
    assert cli(["replay", str(crashed), "--lockstep", "--out", str(tmp_path / "out")]) == 2
    assert "run `vla-driver logs repair" in capsys.readouterr().err


def test_a_damaged_footer_is_refused_with_the_repair_that_rebuilds_it_skipping_a_damaged_chunk(chunked, tmp_path,
                                                                                            capsys):
    """Damage where rosbags reads at open (the footer's pointer to the summary) and in one chunk: refused in one
    line naming the repair; the repair rebuilds the bag from its records without that chunk."""
    bag = shutil.copytree(chunked, tmp_path / "footer")
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    third = chunk_offsets(mcap)[2]
    data[third + 200: third + 220] = bytes(20)  # its CRC no longer matches
    footer = len(data) - 8 - 20  # footer body before the closing magic: summary_start, summary_offset_start, crc
    data[footer: footer + 8] = (len(data) * 7).to_bytes(8, "little")  # the summary is "past the end"
    mcap.write_bytes(bytes(data))
    with open_bags([chunked]) as reader:
        whole = [t for _, t, _ in reader.messages()]
    with pytest.raises(BagError, match=re.escape(f"`vla-driver logs repair {bag}` rebuilds it")):
        read_samples(bag, progress=False)
    assert cli(["logs", "repair", str(bag)]) == 0
    assert "1 damaged chunk in" in capsys.readouterr().out
    with open_bags([bag]) as reader:
        read = [t for _, t, _ in reader.messages()]
    assert 0 < len(read) < len(whole) and set(read) < set(whole) and not reader.skipped
    assert cli(["logs", "repair", str(bag)]) == 0 and ": complete" in capsys.readouterr().out  # nothing left to do
