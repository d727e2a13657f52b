"""Experience logger: every drive becomes a series of rosbag2 MCAP segments (one bag directory each).

Why segments: a crash, a full disk or a pulled power cable costs at most the tail of one segment, and the
quota can free space by whole bags. Layout (see docs/experience.md)::

    <root>/<prefix><YYYY-mm-dd--HH-MM-SS>_<ms><id>--<n>/   one bag per segment, like openpilot's loggerd
        <same name>.mcap, metadata.yaml                 written by rosbags (readable by ros2 bag, Foxglove)
        .lock                                           exists and is flock()ed while the segment is open
        KEEP                                            optional marker: never delete for quota

``SegmentWriter.write`` only enqueues; one background thread does all I/O. Every ``flush_interval_s`` it
closes the pending MCAP chunk and flushes + fsyncs the file, so a killed process loses at most that
interval plus the queue backlog (``repair.repair_segment`` recovers the rest).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from .messages import TYPESTORE

try:
    import fcntl
except ImportError:  # not POSIX: locks are plain marker files
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
KEEP_NAME = "KEEP"
METADATA_NAME = "metadata.yaml"
# <prefix><start date--time>_<milliseconds><random hex>--<counter>: sorts by start time, then counter.
SEGMENT_NAME_RE = re.compile(r"(\d{4}-\d{2}-\d{2}--\d{2}-\d{2}-\d{2})(?:_([0-9a-f]+))?--(\d+)$")
_RECORD_OVERHEAD = 47  # MCAP message record header + its message-index entry, bytes
_STOP = object()


class DiskQuotaError(OSError):
    """Free space stays below ``min_free_bytes`` even after deleting every deletable segment."""


# --- segment directories -------------------------------------------------------------------------------

def lock_is_held(lock_path: Path) -> bool:
    """True when a live process holds the segment's lock (the kernel drops it when the writer dies)."""
    if fcntl is None:
        return Path(lock_path).exists()
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _acquire_lock(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        info = f"pid={os.getpid()} host={socket.gethostname()} opened={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
        os.write(fd, info.encode())
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class SegmentInfo:
    path: Path
    state: str  # "open" (a live writer holds it), "complete", or "crashed" (needs repair)
    kept: bool
    size_bytes: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ours(self) -> bool:
        """Named by a SegmentWriter (only those are ever deleted by the quota)."""
        return SEGMENT_NAME_RE.search(self.name) is not None


def segment_state(path: Path) -> str:
    path = Path(path)
    lock = path / LOCK_NAME
    if lock.exists():
        return "open" if lock_is_held(lock) else "crashed"
    return "complete" if (path / METADATA_NAME).exists() else "crashed"


def is_bag_dir(path: Path) -> bool:
    return path.is_dir() and ((path / METADATA_NAME).exists() or (path / LOCK_NAME).exists()
                              or any(path.glob("*.mcap")))


def segment_age_key(path: Path) -> tuple:
    match = SEGMENT_NAME_RE.search(path.name)
    if match:
        return (match.group(1), match.group(2) or "", int(match.group(3)), path.name)
    return ("", "", 0, path.name)


def list_segments(root: Path) -> list[SegmentInfo]:
    """Bag directories directly under ``root``, oldest first (by the start time and counter in the name)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted((p for p in root.iterdir() if is_bag_dir(p)), key=segment_age_key):
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        out.append(SegmentInfo(path, segment_state(path), (path / KEEP_NAME).exists(), size))
    return out


def mark_keep(segment: Path) -> Path:
    """Flag a segment so the disk quota never deletes it (an empty ``KEEP`` file inside it)."""
    segment = Path(segment)
    if not segment.is_dir():
        raise FileNotFoundError(f"no segment directory at {segment}")
    marker = segment / KEEP_NAME
    marker.touch()
    return marker


# --- the writer ----------------------------------------------------------------------------------------

class _OpenSegment:
    """A bag being written: the rosbags Writer, its connections and the held lock."""

    def __init__(self, path: Path, index: int, start_t_ns: int):
        self.path, self.index, self.start_t_ns = path, index, start_t_ns
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        try:
            self.lock_fd = _acquire_lock(path / LOCK_NAME)
        except OSError:
            self.writer.abort()
            raise
        self.connections = {}
        self.bytes = 0
        self.messages = 0

    def connection(self, topic: str, msgtype: str):
        conn = self.connections.get(topic)
        if conn is None:
            conn = self.writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            self.connections[topic] = conn
        return conn

    def flush(self):
        """Close the pending MCAP chunk and push it to disk: this bounds what a SIGKILL can lose."""
        storage = self.writer.storage
        if storage is None:
            return
        chunk = getattr(storage, "chunk", None)  # rosbags' McapWriter internals; checked, not assumed
        if chunk is not None and chunk.msgs and hasattr(storage, "close_chunk"):
            storage.close_chunk()
        storage.bio.flush()
        os.fsync(storage.bio.fileno())

    def close(self, custom: dict):
        """Footer + summary + metadata.yaml, then drop the lock (the segment is complete)."""
        try:
            self.writer.set_custom_data("vla_driver", json.dumps(custom))
            self.writer.close()
            os.unlink(self.path / LOCK_NAME)
        except BaseException:
            with suppress(Exception):
                self.writer.abort()
            raise
        finally:
            os.close(self.lock_fd)

    def abort(self):
        """Give up on a failing segment: leave the lock file (it needs repair) but release the flock."""
        try:
            with suppress(OSError):
                self.writer.abort()
        finally:
            os.close(self.lock_fd)


FLUSH_INTERVAL_S = 0.5  # how much a killed writer can lose at most: what it had not flushed yet


class SegmentWriter:
    """Non-blocking rosbag2 MCAP segment logger with rotation, disk quota and graceful degradation.

    ``write`` is safe from any thread and never blocks or raises: when the queue is full, the topic is
    unknown, the writer is closed, or the disk is failing, the message is dropped and counted in ``stats()``.
    """

    def __init__(self, root_dir, segment_duration_s: float = 60.0, segment_max_bytes: int = 1 << 30,
                 min_free_bytes: int = 2 << 30, queue_size: int = 2000, name_prefix: str = "",
                 *, queue_max_bytes: int = 256 << 20, flush_interval_s: float = FLUSH_INTERVAL_S,
                 retry_interval_s: float = 2.0,
                 disk_usage: Callable[[Path], object] = shutil.disk_usage):
        self.root = Path(root_dir)
        now = time.time()
        started = time.strftime("%Y-%m-%d--%H-%M-%S", time.localtime(now))
        self.route = f"{name_prefix}{started}_{int(now % 1 * 1000):03d}{uuid.uuid4().hex[:4]}"
        self.segment_duration_ns = int(segment_duration_s * 1e9)
        self.segment_max_bytes = int(segment_max_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.flush_interval_s = float(flush_interval_s)
        self.retry_interval_s = float(retry_interval_s)
        self._disk_usage = disk_usage
        self._queue_max_bytes = int(queue_max_bytes)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._topics: dict[str, str] = {}
        self._lock = threading.Lock()  # write() admission + drop counters
        self._keep_lock = threading.Lock()  # KEEP flags vs quota deletion
        self._queued_bytes = 0
        self._closing = False
        self._dropped: Counter = Counter()
        self._keep_next = False
        # Owned by the writer thread:
        self._seg: _OpenSegment | None = None
        self._next_index = 0
        self._state = "ok"
        self._last_error = ""
        self._next_retry = 0.0
        self._count = Counter()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._degrade(err)
        self._thread = threading.Thread(target=self._run, name=f"segment-writer-{self.route}", daemon=True)
        self._thread.start()

    # --- caller side ---------------------------------------------------------------------------------

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic before writing to it; ``msgtype`` like ``sensor_msgs/msg/Image`` (Jazzy defs)."""
        if msgtype not in TYPESTORE.types:
            raise ValueError(f"unknown message type {msgtype!r} (not in rosbags' ROS 2 Jazzy typestore)")
        known = self._topics.get(topic)
        if known is not None and known != msgtype:
            raise ValueError(f"topic {topic} already declared as {known}, not {msgtype}")
        self._topics = {**self._topics, topic: msgtype}  # swapped whole: readers never see a partial dict

    def write(self, topic: str, t_ns: int, cdr_bytes: bytes) -> bool:
        """Enqueue one serialized message stamped ``t_ns``; False (and counted) when it is dropped."""
        if topic not in self._topics:
            return self._drop("unknown_topic")
        try:
            size, stamp = len(cdr_bytes), int(t_ns)
        except (TypeError, ValueError):
            return self._drop("invalid")
        with self._lock:
            if self._closing:
                self._dropped["closed"] += 1
                return False
            if self._queued_bytes + size > self._queue_max_bytes:
                self._dropped["queue_full"] += 1
                return False
            try:
                self._queue.put_nowait((topic, stamp, cdr_bytes))
            except queue.Full:
                self._dropped["queue_full"] += 1
                return False
            self._queued_bytes += size
        return True

    def flag_keep(self, segment: str | Path | None = None) -> bool:
        """Protect a segment from the quota; ``None`` means the current one (or the next, if none is open)."""
        with self._keep_lock:
            if segment is None:
                seg = self._seg
                if seg is None:
                    self._keep_next = True
                    return True
                path = seg.path
            else:
                path = Path(segment)
                if not path.is_absolute() and not path.exists():
                    path = self.root / path
            try:
                mark_keep(path)
            except OSError as err:
                log.warning("cannot flag %s as KEEP: %s", path, err)
                return False
        return True

    def stats(self) -> dict:
        seg = self._seg
        with self._lock:
            dropped = dict(self._dropped)
        return {
            "state": self._state,
            "written": self._count["written"],
            "bytes": self._count["bytes"],
            "dropped": sum(dropped.values()),
            **{f"dropped_{k}": dropped.get(k, 0) for k in ("queue_full", "disk", "unknown_topic", "invalid",
                                                             "closed")},
            "disk_errors": self._count["disk_errors"],
            "last_error": self._last_error,
            "current_segment": seg.path.name if seg else None,
            "segment_messages": seg.messages if seg else 0,
            "segments_closed": self._count["segments_closed"],
            "segments_deleted": self._count["segments_deleted"],
            "queue_depth": self._queue.qsize(),
            "route": self.route,
        }

    @property
    def current_segment(self) -> Path | None:
        seg = self._seg
        return seg.path if seg else None

    def close(self, timeout: float = 30.0) -> dict:
        """Write what is queued, close the open segment cleanly, stop the thread; returns final stats."""
        with self._lock:
            already = self._closing
            self._closing = True
        if not already:
            try:
                self._queue.put(_STOP, timeout=timeout)  # writers are shut out; the thread frees room
            except queue.Full:
                log.warning("segment writer queue stayed full for %.1f s while closing", timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("segment writer did not finish within %.1f s; the open segment stays locked", timeout)
        return self.stats()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drop(self, reason: str) -> bool:
        with self._lock:
            self._dropped[reason] += 1
        return False

    # --- writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self.flush_interval_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            try:
                if item is not None:
                    self._handle(*item)
                if time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + self.flush_interval_s
            except Exception as err:  # keep the thread alive whatever a storage layer raises
                log.exception("segment writer error")
                self._degrade(err)
        self._close_segment()

    def _handle(self, topic: str, t_ns: int, data: bytes) -> None:
        with self._lock:
            self._queued_bytes -= len(data)
        if self._state == "degraded" and not self._try_recover():
            self._drop("disk")
            return
        try:
            seg = self._seg
            if seg is not None and (t_ns - seg.start_t_ns >= self.segment_duration_ns
                                    or seg.bytes >= self.segment_max_bytes):
                self._close_segment()
                seg = None
            if seg is None:
                seg = self._open_segment(t_ns)
            seg.writer.write(seg.connection(topic, self._topics[topic]), t_ns, data)
        except (OSError, WriterError) as err:
            self._degrade(err)
            self._drop("disk")
            return
        seg.messages += 1
        seg.bytes += len(data) + _RECORD_OVERHEAD
        self._count["written"] += 1
        self._count["bytes"] += len(data)

    def _open_segment(self, t_ns: int) -> _OpenSegment:
        self._enforce_quota()
        path = self.root / f"{self.route}--{self._next_index}"
        self._next_index += 1
        seg = _OpenSegment(path, self._next_index - 1, t_ns)
        with self._keep_lock:
            self._seg = seg  # from here on a failure aborts it through _degrade
            if self._keep_next:
                self._keep_next = False
                mark_keep(path)
        for topic, msgtype in self._topics.items():
            seg.connection(topic, msgtype)
        return seg

    def _close_segment(self) -> None:
        seg = self._seg
        if seg is None:
            return
        self._seg = None
        custom = {"route": self.route, "segment": seg.index, "flush_interval_s": self.flush_interval_s,
                  "writer": "vla_driver.experience.segments.SegmentWriter"}
        try:
            seg.close(custom)
        except (OSError, WriterError) as err:
            self._degrade(err)
            return
        self._count["segments_closed"] += 1

    def _tick(self) -> None:
        """Periodic: flush the open segment and watch free space (or retry after a failure)."""
        if self._state == "degraded":
            self._try_recover()
            return
        try:
            if self._seg is not None:
                self._seg.flush()
            if self._free_bytes() < self.min_free_bytes:
                self._enforce_quota()
        except DiskQuotaError as err:
            self._close_segment()  # close cleanly while the reserve still has room for the summary
            self._degrade(err)
        except (OSError, WriterError) as err:
            self._degrade(err)

    def _free_bytes(self) -> int:
        return int(self._disk_usage(self.root).free)

    def _enforce_quota(self) -> None:
        """Delete the oldest unflagged, not-open segments until ``min_free_bytes`` are free."""
        free = self._free_bytes()
        if free >= self.min_free_bytes:
            return
        with self._keep_lock:
            for info in list_segments(self.root):
                if free >= self.min_free_bytes:
                    break
                if info.kept or info.state == "open" or not info.ours:
                    continue
                shutil.rmtree(info.path)
                self._count["segments_deleted"] += 1
                log.info("quota: deleted %s (%d bytes)", info.name, info.size_bytes)
                free = self._free_bytes()
        if free < self.min_free_bytes:
            raise DiskQuotaError(f"only {free} bytes free under {self.root}, need {self.min_free_bytes}; "
                                 "every remaining segment is open or flagged KEEP")

    def _degrade(self, err: Exception) -> None:
        if self._seg is not None:
            self._seg.abort()
            self._seg = None
        if self._state != "degraded":
            log.warning("experience logging degraded: %s", err)
        self._state = "degraded"
        self._last_error = f"{type(err).__name__}: {err}"
        self._count["disk_errors"] += 1
        self._next_retry = time.monotonic() + self.retry_interval_s

    def _try_recover(self) -> bool:
        if time.monotonic() < self._next_retry:
            return False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._enforce_quota()
        except OSError as err:
            self._degrade(err)
            return False
        log.info("experience logging recovered")
        self._state = "ok"
        return True
