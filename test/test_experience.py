"""Experience logging: segment rotation, locks, quota, degradation, repair after SIGKILL, bag -> samples."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from vla_driver.core.trajectory import TrajectorySpec, constant_motion
from vla_driver.core.types import DecisionResult
from vla_driver.core.vocabulary import Decision, DecisionVocabulary
from vla_driver.experience import messages as m
from vla_driver.experience.reader import MissingTopicError, TopicMap, find_bags, iter_messages, read_samples
from vla_driver.experience.repair import complete_records, repair_all, repair_segment
from vla_driver.experience.segments import (
    LOCK_NAME,
    METADATA_NAME,
    SegmentWriter,
    list_segments,
    lock_is_held,
    mark_keep,
    segment_state,
)

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000 * 10**9
VOCAB = DecisionVocabulary()
Usage = namedtuple("Usage", "total used free")


def ns(t: float) -> int:
    return T0 + int(round(t * 1e9))


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def bag_counts(root: Path) -> list[int]:
    counts = []
    for info in list_segments(root):
        with Reader(info.path) as reader:
            counts.append(reader.message_count)
    return counts


# --- a synthetic drive ---------------------------------------------------------------------------------

def pose_at(t: float, speed: float, yaw_rate: float) -> tuple[float, float, float]:
    if yaw_rate == 0.0:
        return speed * t, 0.0, 0.0
    r = speed / yaw_rate
    return r * np.sin(yaw_rate * t), r * (1 - np.cos(yaw_rate * t)), yaw_rate * t


def frame(k: int) -> np.ndarray:
    img = np.zeros((6, 8, 3), np.uint8)
    img[..., 0], img[..., 1], img[:, :4, 2] = k % 256, 255 - k % 256, 77
    return img


def decision_for(k: int) -> DecisionResult:
    probs = np.full((len(VOCAB.speeds), len(VOCAB.paths)), 0.01)
    i, j = k % len(VOCAB.speeds), k % len(VOCAB.paths)
    probs[i, j] = 1.0
    probs /= probs.sum()
    return DecisionResult(Decision(VOCAB.speeds[i], VOCAB.paths[j], f"reason {k}"), probs,
                          float(np.log(probs[i, j])), latency_ms=40.0, model_version="test-1")


def drive_messages(duration_s=8.0, speed=10.0, yaw_rate=0.0, with_decisions=True, image_topic="/camera/image_raw",
                   odom_topic="/odom", image_kind="rgb8"):
    """(topic, msgtype, t_ns, cdr) of a steady drive; takeover from 5 s to 6 s."""
    out = []
    for k in range(int(duration_s * 20) + 1):
        t = k * 0.05
        out.append((odom_topic, m.ODOMETRY, ns(t), m.odometry_message(ns(t), *pose_at(t, speed, yaw_rate),
                                                                        speed, yaw_rate)))
    for k in range(int(duration_s * 10) + 1):
        t = k * 0.1
        if image_kind == "png":
            out.append((image_topic, m.COMPRESSED_IMAGE, ns(t), m.compressed_image_message(frame(k), ns(t), "png")))
        else:
            out.append((image_topic, m.IMAGE, ns(t), m.image_message(frame(k), ns(t), encoding=image_kind)))
        out.append(("/cmd_vel", m.TWIST, ns(t), m.twist_message(speed, yaw_rate)))
    for k in range(int(duration_s * 2) + 1):
        t = k * 0.5
        out.append(("/navigation", m.STRING, ns(t), m.string_message(f"nav {k}")))
        if with_decisions:
            out.append(("/vla/decision", m.STRING, ns(t + 0.12),
                        m.decision_message(decision_for(k), VOCAB, ns(t) / 1e9)))
            plan = constant_motion(speed, yaw_rate, TrajectorySpec())
            plan.poses[:, 1] += 0.01 * k  # makes each plan recognisable
            out.append(("/vla/trajectory", m.PATH, ns(t + 0.15), m.path_message(plan, ns(t))))
    for t, value in ((0.0, False), (5.0, True), (6.0, False)):
        out.append(("/vla/takeover", m.BOOL, ns(t), m.bool_message(value)))
    out.append(("/vla/events", m.STRING, ns(5.0), m.string_message("driver_override")))
    return sorted(out, key=lambda r: r[2])


def log_drive(root: Path, msgs, **kwargs) -> dict:
    writer = SegmentWriter(root, min_free_bytes=0, **kwargs)
    for topic, msgtype in {(r[0], r[1]) for r in msgs}:
        writer.add_topic(topic, msgtype)
    for topic, _, t_ns, data in msgs:
        assert writer.write(topic, t_ns, data)
    return writer.close()


def expected_motion(speed, yaw_rate):
    return np.array([pose_at(tau, speed, yaw_rate) for tau in TrajectorySpec().times])


# --- segments ------------------------------------------------------------------------------------------

def write_strings(writer: SegmentWriter, times_s, size=100, topic="/s"):
    for t in times_s:
        assert writer.write(topic, ns(t), m.string_message("x" * size))


def test_rotation_by_duration(tmp_path):
    writer = SegmentWriter(tmp_path, segment_duration_s=1.0, min_free_bytes=0, name_prefix="dur_")
    writer.add_topic("/s", m.STRING)
    write_strings(writer, [k * 0.1 for k in range(35)])
    stats = writer.close()
    assert stats["written"] == 35 and stats["segments_closed"] == 4 and stats["dropped"] == 0
    assert bag_counts(tmp_path) == [10, 10, 10, 5]
    names = [info.name for info in list_segments(tmp_path)]
    assert all(name.startswith("dur_") and name.endswith(f"--{i}") for i, name in enumerate(names))


def test_rotation_by_size(tmp_path):
    writer = SegmentWriter(tmp_path, segment_max_bytes=30_000, min_free_bytes=0)
    writer.add_topic("/s", m.STRING)
    write_strings(writer, [0.01 * k for k in range(40)], size=2000)
    writer.close()
    assert bag_counts(tmp_path) == [15, 15, 10]
    for info in list_segments(tmp_path):
        assert info.size_bytes < 30_000 + 2 * 2100 + 4000  # one message past the limit + summary


def test_lock_held_while_open_and_gone_after_close(tmp_path):
    writer = SegmentWriter(tmp_path, min_free_bytes=0)
    writer.add_topic("/s", m.STRING)
    assert writer.flag_keep()  # no segment yet: flags the first one when it opens
    write_strings(writer, [0.0])
    wait_for(lambda: writer.current_segment is not None)
    segment = writer.current_segment
    assert lock_is_held(segment / LOCK_NAME) and segment_state(segment) == "open"
    assert (segment / "KEEP").exists()
    assert not (segment / "metadata.yaml").exists()
    assert repair_segment(segment).status == "active"
    writer.close()
    assert not (segment / LOCK_NAME).exists() and segment_state(segment) == "complete"
    with Reader(segment) as reader:
        assert reader.message_count == 1


class FakeDisk:
    """disk_usage stand-in: a disk of ``capacity`` bytes holding exactly the files under ``root``."""

    def __init__(self, root: Path, capacity: int):
        self.root, self.capacity = root, capacity

    def used(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def __call__(self, _path):
        used = self.used()
        return Usage(self.capacity, used, max(0, self.capacity - used))


def test_quota_deletes_oldest_unflagged_and_keeps_flagged(tmp_path):
    writer = SegmentWriter(tmp_path, segment_duration_s=1.0, min_free_bytes=0)
    writer.add_topic("/s", m.STRING)
    write_strings(writer, [k * 0.1 for k in range(40)], size=1000)
    writer.close()
    old = list_segments(tmp_path)
    assert len(old) == 4
    mark_keep(old[0].path)  # the oldest is flagged: it must survive
    disk = FakeDisk(tmp_path, capacity=0)
    disk.capacity = disk.used() + 50_000
    need = 50_000 + old[1].size_bytes + old[2].size_bytes // 2  # forces deleting exactly segments 1 and 2
    writer = SegmentWriter(tmp_path, min_free_bytes=need, disk_usage=disk)
    writer.add_topic("/s", m.STRING)
    write_strings(writer, [100.0, 100.1, 100.2])
    stats = writer.close()
    left = [info.name for info in list_segments(tmp_path)]
    assert stats["segments_deleted"] == 2 and stats["state"] == "ok" and stats["written"] == 3
    assert left[:2] == [old[0].name, old[3].name] and len(left) == 3
    assert list_segments(tmp_path)[0].kept


def test_full_disk_degrades_without_raising_and_recovers(tmp_path):
    disk = FakeDisk(tmp_path, capacity=0)  # nothing free and nothing to delete
    writer = SegmentWriter(tmp_path, min_free_bytes=1000, disk_usage=disk, retry_interval_s=0.2)
    writer.add_topic("/s", m.STRING)
    write_strings(writer, [0.0, 0.1])
    wait_for(lambda: writer.stats()["dropped_disk"] == 2)
    stats = writer.stats()
    assert stats["state"] == "degraded" and stats["disk_errors"] >= 1 and stats["written"] == 0
    assert "DiskQuotaError" in stats["last_error"] and list_segments(tmp_path) == []
    disk.capacity = 10**9  # space freed: the next message after the retry interval gets through
    time.sleep(0.3)
    write_strings(writer, [0.2])
    stats = writer.close()
    assert stats["state"] == "ok" and stats["written"] == 1 and bag_counts(tmp_path) == [1]


def test_unwritable_root_degrades_without_raising(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the log folder should be")
    writer = SegmentWriter(blocker / "logs", min_free_bytes=0, retry_interval_s=0.05)
    writer.add_topic("/s", m.STRING)
    for k in range(5):
        writer.write("/s", ns(k * 0.1), m.string_message("x"))
        time.sleep(0.06)
    stats = writer.close()
    assert stats["state"] == "degraded" and stats["written"] == 0
    assert stats["dropped_disk"] == 5 and stats["disk_errors"] >= 2 and "NotADirectory" in stats["last_error"]


def test_bounded_queue_drops_and_counts(tmp_path):
    entered, release = threading.Event(), threading.Event()
    disk = FakeDisk(tmp_path, capacity=10**9)

    def stalling_disk(path):  # holds the writer thread inside its first I/O call
        entered.set()
        release.wait(10)
        return disk(path)

    writer = SegmentWriter(tmp_path, queue_size=5, min_free_bytes=1, disk_usage=stalling_disk,
                           flush_interval_s=30.0)
    writer.add_topic("/s", m.STRING)
    assert writer.write("/s", ns(0), m.string_message("first"))
    assert entered.wait(5)
    accepted = [writer.write("/s", ns(0.01 * k), m.string_message(str(k))) for k in range(1, 21)]
    assert accepted == [True] * 5 + [False] * 15
    assert not writer.write("/unknown", ns(0), b"x")
    release.set()
    stats = writer.close()
    assert stats["written"] == 6 and stats["dropped_queue_full"] == 15 and stats["dropped_unknown_topic"] == 1
    assert not writer.write("/s", ns(1), m.string_message("late")) and writer.stats()["dropped_closed"] == 1


def test_concurrent_writers_lose_nothing(tmp_path):
    writer = SegmentWriter(tmp_path, min_free_bytes=0, queue_size=10_000)
    for i in range(4):
        writer.add_topic(f"/t{i}", m.STRING)

    def produce(i):
        for k in range(200):
            writer.write(f"/t{i}", ns(k * 0.001), m.string_message(f"{i}:{k}"))

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = writer.close()
    assert stats["written"] == 800 and stats["dropped"] == 0
    seen = sorted(msg.msg.data for msg in iter_messages(tmp_path))
    assert seen == sorted(f"{i}:{k}" for i in range(4) for k in range(200))


# --- repair --------------------------------------------------------------------------------------------

def test_repair_recovers_every_complete_chunk_of_a_truncated_file(tmp_path):
    writer = SegmentWriter(tmp_path, min_free_bytes=0)
    writer.add_topic("/camera/image_raw", m.IMAGE)
    big = np.zeros((240, 560, 3), np.uint8)  # ~400 kB: rosbags closes a chunk every 3 frames
    for k in range(12):
        big[0, 0, 0] = k
        writer.write("/camera/image_raw", ns(k * 0.1), m.image_message(big, ns(k * 0.1)))
    writer.close()
    segment = list_segments(tmp_path)[0].path
    mcap = next(segment.glob("*.mcap"))
    ends, offset, per_chunk = [], 8, 3
    for opcode, body in complete_records(mcap):
        offset += 9 + len(body)
        if opcode == 0x06:
            ends.append(offset)
    assert len(ends) >= 3
    data = mcap.read_bytes()
    cut = ends[1] + (ends[2] - ends[1]) // 2  # in the middle of the third chunk
    mcap.write_bytes(data[:cut])
    (segment / "metadata.yaml").unlink()
    (segment / LOCK_NAME).write_text("pid=0 (stale)")
    mark_keep(segment)
    assert segment_state(segment) == "crashed"
    report = repair_all(tmp_path, progress=False)[0]
    assert report.status == "repaired" and report.messages == 2 * per_chunk and report.discarded_bytes > 0
    assert segment_state(segment) == "complete" and (segment / "KEEP").exists()
    stamps = [msg.t_ns for msg in iter_messages(segment)]
    assert stamps == [ns(k * 0.1) for k in range(2 * per_chunk)]
    from mcap.reader import make_reader  # other tools (Foxglove's library) read the rebuilt file too

    with next(segment.glob("*.mcap")).open("rb") as f:
        assert sum(1 for _ in make_reader(f).iter_messages()) == 2 * per_chunk
    assert repair_segment(segment).status == "complete"


KILL_CHILD = """
import sys, time
from vla_driver.experience.segments import SegmentWriter
from vla_driver.experience import messages as m
writer = SegmentWriter(sys.argv[1], segment_duration_s=60.0, min_free_bytes=0, flush_interval_s=0.25)
writer.add_topic("/seq", m.STRING)
pad = "p" * 1000
with open(sys.argv[2], "w", buffering=1) as log:
    k = 0
    while True:
        t = time.time_ns()
        writer.write("/seq", t, m.string_message(f"{k} {pad}"))
        log.write(f"{k} {t}\\n")
        k += 1
        time.sleep(0.01)
"""


def test_kill_mid_segment_then_repair_keeps_all_but_the_last_two_seconds(tmp_path):
    root, log = tmp_path / "logs", tmp_path / "written.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(root), str(log)], env=env)
    try:
        def logged():
            return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

        wait_for(lambda: len(logged()) > 1 and int(logged()[-1][1]) - int(logged()[0][1]) > 3e9, timeout=60)
    finally:
        kill_ns = time.time_ns()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    written = {int(k): int(t) for k, t in (r for r in logged() if len(r) == 2)}
    segments = list_segments(root)
    assert len(segments) == 1 and segments[0].state == "crashed"
    assert not (segments[0].path / "metadata.yaml").exists()

    report = repair_all(root, progress=False)[0]
    assert report.status == "repaired" and segment_state(segments[0].path) == "complete"
    recovered = [(int(msg.msg.data.split()[0]), msg.t_ns) for msg in iter_messages(root, ["/seq"])]
    seqs = [k for k, _ in recovered]
    assert seqs == list(range(len(seqs)))  # a gap-free prefix, no duplicates
    assert all(written.get(k, t) == t for k, t in recovered)  # stamps are the ones written
    must_have = [k for k, t in written.items() if t < kill_ns - 2_000_000_000]
    assert len(must_have) > 50 and set(must_have) <= set(seqs)
    assert report.messages == len(seqs) >= len(must_have)


# --- reading samples -----------------------------------------------------------------------------------

@pytest.mark.parametrize("speed,yaw_rate", [(10.0, 0.0), (8.0, 0.25)])
def test_reader_round_trip_future_motion_decisions_and_takeovers(tmp_path, speed, yaw_rate):
    log_drive(tmp_path, drive_messages(speed=speed, yaw_rate=yaw_rate), segment_duration_s=3.0)
    assert len(list_segments(tmp_path)) == 3  # samples near segment ends need the next segment's odometry
    samples = read_samples(tmp_path, progress=False)
    assert [round(s.stamp - T0 / 1e9, 3) for s in samples] == [0.5 * k for k in range(11)]
    want = expected_motion(speed, yaw_rate)
    for k, s in enumerate(samples):
        t = 0.5 * k
        np.testing.assert_allclose(s.future_motion, want, atol=2e-3)
        np.testing.assert_array_equal(s.image, frame(5 * k))
        assert s.speed == pytest.approx(speed) and s.yaw_rate == pytest.approx(yaw_rate)
        assert s.accel == pytest.approx(0.0, abs=1e-6) and s.navigation == f"nav {k}"
        logged = decision_for(k)
        assert (s.decision.speed, s.decision.path) == (logged.decision.speed, logged.decision.path)
        np.testing.assert_allclose(s.decision.table(VOCAB), logged.probs, atol=1e-6)
        key = f"{logged.decision.speed}, {logged.decision.path}"
        assert s.decision.log_probs[key] == pytest.approx(s.decision.log_prob, abs=1e-5)
        plan = constant_motion(speed, yaw_rate, TrajectorySpec()).poses
        plan[:, 1] += 0.01 * k
        np.testing.assert_allclose(s.trajectory, plan, atol=1e-9)
        assert s.command == pytest.approx((speed, yaw_rate))
        assert s.intervention == (2.0 <= t < 5.0)
        assert s.takeover == (t >= 2.0)
        if s.intervention:
            assert s.intervention_after_s == pytest.approx(5.0 - t)
            assert (pytest.approx(5.0 - t), "driver_override") in s.events
        obs = s.observation()
        assert obs.speed == s.speed and obs.image is s.image


def test_refresh_truth_is_the_future_motion_label_or_the_logged_decision_except_under_takeover(tmp_path):
    from vla_driver.core.labels import label_from_future
    from vla_driver.rl.refresh import load_experience

    log_drive(tmp_path, drive_messages(speed=10.0), segment_duration_s=3.0)
    spec = TrajectorySpec()
    from_motion = load_experience([tmp_path], VOCAB, spec, progress=False)
    from_log = load_experience([tmp_path], VOCAB, spec, progress=False, truth="logged")
    samples = read_samples(tmp_path, progress=False)
    assert len(from_log.truths) == len(samples) == 11 and from_log.takeover.sum() == 7  # takeover from t = 2 s
    for k, s in enumerate(samples):
        motion = label_from_future(s.future_motion, s.speed, VOCAB, spec)
        logged = Decision(s.decision.speed, s.decision.path)
        assert from_motion.truths[k] == motion and from_log.logged[k] == logged
        assert from_log.truths[k] == (motion if from_log.takeover[k] else logged)
    assert any(from_log.truths[k] != from_motion.truths[k] for k in range(4))  # the logged decisions cycle
    with pytest.raises(ValueError, match="truth must be one of"):
        load_experience([tmp_path], VOCAB, spec, progress=False, truth="human")


def test_sample_accel_is_the_nodes_causal_filter_and_never_sees_past_the_frame(tmp_path):
    """Speed 10 m/s until 2 s, then +2 m/s^2: the filter (time constant 0.3 s, odometry at 20 Hz, so a
    blend of 1/7 per message) gives 2 * (1 - (6/7)^n) n messages into the ramp, and exactly 0 at 2 s."""
    def speed(t):
        return 10.0 + 2.0 * max(0.0, t - 2.0)

    def x(t):
        return 10.0 * t + max(0.0, t - 2.0) ** 2

    msgs = [("/odom", m.ODOMETRY, ns(k * 0.05), m.odometry_message(ns(k * 0.05), x(k * 0.05), 0.0, 0.0,
                                                                   speed(k * 0.05))) for k in range(121)]
    msgs += [("/camera/image_raw", m.IMAGE, ns(k * 0.1), m.image_message(frame(k), ns(k * 0.1)))
             for k in range(61)]
    log_drive(tmp_path, sorted(msgs, key=lambda r: r[2]))
    samples = {round(s.stamp - T0 / 1e9, 3): s for s in read_samples(tmp_path, progress=False)}
    assert sorted(samples) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert samples[1.5].accel == 0.0 and samples[2.0].accel == 0.0  # a centred difference gave 1.0 here
    assert samples[2.5].accel == pytest.approx(2.0 * (1 - (6 / 7) ** 10))
    assert samples[3.0].accel == pytest.approx(2.0 * (1 - (6 / 7) ** 20))
    assert samples[3.0].speed == pytest.approx(12.0)


@pytest.mark.parametrize("storage,image_kind", [(StoragePlugin.SQLITE3, "png"), (StoragePlugin.MCAP, "bgr8")])
def test_reader_reads_bags_written_directly_with_rosbags(tmp_path, storage, image_kind):
    bag = tmp_path / "foreign"
    msgs = drive_messages(duration_s=6.0, speed=5.0, yaw_rate=-0.1, with_decisions=False,
                          image_topic="/front/camera", odom_topic="/vehicle/odom", image_kind=image_kind)
    with Writer(bag, version=9, storage_plugin=storage) as writer:
        conns = {t: writer.add_connection(t, mt, typestore=m.TYPESTORE) for t, mt in {(r[0], r[1]) for r in msgs}}
        for topic, _, t_ns, data in msgs:
            writer.write(conns[topic], t_ns, data)
    topics = TopicMap(image="/front/camera", odom="/vehicle/odom")
    samples = read_samples(bag, topics, progress=False)
    assert [round(s.stamp - T0 / 1e9, 3) for s in samples] == [0.5 * k for k in range(7)]
    for k, s in enumerate(samples):
        assert s.decision is None and s.trajectory is None
        np.testing.assert_array_equal(s.image, frame(5 * k))
        np.testing.assert_allclose(s.future_motion, expected_motion(5.0, -0.1), atol=2e-3)

    with pytest.raises(MissingTopicError) as err:
        read_samples(bag, TopicMap(image="/front/camera"), progress=False)
    assert "'/odom'" in str(err.value) and "/vehicle/odom" in str(err.value) and "/front/camera" in str(err.value)
    assert err.value.topic == "/odom"


def test_find_bags_expands_folders_of_drive_folders_and_skips_unrepaired_segments(tmp_path, caplog):
    def segment(path: Path, complete: bool) -> Path:
        path.mkdir(parents=True)
        (path / f"{path.name}.mcap").write_bytes(b"")
        if complete:
            (path / METADATA_NAME).write_text("rosbag2_bagfile_information: {}\n")
        return path

    root = tmp_path / "reference"
    route_a = [segment(root / "drive_a" / f"rt_2026-12-01--10-00-00--{n}", True) for n in (1, 0)]
    route_b = segment(root / "drive_b" / "day2" / "rt_2026-12-02--09-00-00--0", True)
    segment(root / "drive_b" / "rt_2026-12-02--09-30-00--0", False)  # crashed: no metadata until repaired
    (root / "notes").mkdir()
    loose = segment(tmp_path / "loose_bag", True)

    assert find_bags([root, loose]) == [route_a[1], route_a[0], route_b, loose]  # oldest segment first per folder
    assert "skipping 1 open or unrepaired segments" in caplog.text and "09-30-00--0" in caplog.text
    with pytest.raises(FileNotFoundError, match="neither a bag nor a folder of bags"):
        find_bags(root / "notes")


def test_logs_cli_info_keep_repair(tmp_path, capsys):
    import argparse

    from vla_driver.cli import logs

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    logs.register(sub)

    def run(*argv) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    writer = SegmentWriter(tmp_path, segment_duration_s=1.0, min_free_bytes=0)
    writer.add_topic("/s", m.STRING)
    write_strings(writer, [0.0, 0.5, 1.0])
    writer.close()
    first, second = list_segments(tmp_path)
    (second.path / "metadata.yaml").unlink()  # as if killed before closing
    assert run("logs", "keep", str(first.path)) == 0 and list_segments(tmp_path)[0].kept
    capsys.readouterr()
    assert run("logs", "info", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "/s" in out and "2 segments" in out and "1 crashed" in out and "1 kept" in out
    assert run("logs", "repair", str(tmp_path)) == 0
    assert "repaired, 1 messages" in capsys.readouterr().out
    assert [s.state for s in list_segments(tmp_path)] == ["complete", "complete"]
    assert run("logs", "keep", str(tmp_path / "missing")) == 1
