"""Make segments of a killed logger readable again (what ``ros2 bag reindex`` does for rosbag2 MCAP).

A killed writer leaves an MCAP file without its summary and footer, no metadata.yaml, and a stale lock.
We walk the file's top-level records ourselves, stop at the first one that is cut short, let the ``mcap``
package parse each complete record (chunks included; a damaged one is skipped and counted), and rewrite every
recovered message into a fresh bag with rosbags' Writer. The new bag replaces the old directory; a ``KEEP``
marker is carried over. A closed bag whose footer or summary was damaged later is rebuilt the same way.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import breakup_chunk
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from tqdm import tqdm

from .segments import KEEP_NAME, LOCK_NAME, METADATA_NAME, list_segments, segment_state

log = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
_IDL_SEPARATOR = "=" * 80 + "\n"


@dataclass
class RepairReport:
    path: Path
    status: str  # "complete" (nothing to do), "repaired", "active" (a live writer holds it), "failed"
    messages: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    first_ns: int | None = None
    last_ns: int | None = None
    discarded_bytes: int = 0  # tail of the file that held no complete record
    note: str = ""

    def summary(self) -> str:
        span = f", {(self.last_ns - self.first_ns) / 1e9:.1f} s" if self.messages > 1 else ""
        tail = f", dropped a {self.discarded_bytes}-byte partial tail" if self.discarded_bytes else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.path.name}: {self.status}, {self.messages} messages{span}{tail}{note}"


def complete_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of every top-level MCAP record that is wholly present, in file order.

    Stops at the footer, at the summary section (``DataEnd``), or where the file is cut short.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise ValueError(f"{path} is not an MCAP file (bad magic)")
        while True:
            head = f.read(9)
            if len(head) < 9:
                return
            opcode, length = struct.unpack("<BQ", head)
            if f.tell() + length > size:
                return
            yield opcode, f.read(length)
            if opcode in (Opcode.DATA_END, Opcode.FOOTER):
                return


def _records(path: Path, stats: dict) -> Iterator[Schema | Channel | Message]:
    """Schemas, channels and messages from the complete records, chunks opened; a chunk whose contents are
    damaged (CRC, compression, a record inside) is skipped and counted in ``stats["damaged_chunks"]``."""
    end = len(MCAP_MAGIC)
    for opcode, body in complete_records(path):
        stream = ReadDataStream(BytesIO(body))
        if opcode == Opcode.CHUNK:
            try:
                records = [r for r in breakup_chunk(Chunk.read(stream), validate_crc=True)
                           if isinstance(r, Schema | Channel | Message)]
            except Exception:  # noqa: BLE001 - whatever a damaged chunk makes the parser or decompressor raise
                stats["damaged_chunks"] = stats.get("damaged_chunks", 0) + 1
                records = []
            yield from records
        elif opcode == Opcode.SCHEMA:
            yield Schema.read(stream)
        elif opcode == Opcode.CHANNEL:
            yield Channel.read(stream)
        elif opcode == Opcode.MESSAGE:
            yield Message.read(stream, len(body))
        end += 9 + len(body)
        stats["end"] = end


def _type_hash(name: str, encoding: str, text: str) -> str:
    """RIHS01 hash of a message type from its embedded definition (metadata.yaml wants it)."""
    store = get_typestore(Stores.EMPTY)
    if encoding == "ros2idl":
        types = {}
        for part in text.split(_IDL_SEPARATOR)[1:] if text.startswith(_IDL_SEPARATOR) else [text]:
            types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
    else:
        types = get_types_from_msg(text, name)
    store.register(types)
    return store.hash_rihs01(name)


class _BagRebuilder:
    """Feeds recovered records into a new rosbags Writer, creating connections as channels appear."""

    def __init__(self, out: Path):
        self.writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.schemas: dict[int, Schema] = {}
        self.connections: dict[tuple[str, str], object] = {}
        self.by_channel: dict[int, object] = {}
        self.counts: Counter = Counter()
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def add(self, record) -> None:
        if isinstance(record, Schema):
            self.schemas[record.id] = record
        elif isinstance(record, Channel):
            self._add_channel(record)
        elif record.channel_id in self.by_channel:
            conn = self.by_channel[record.channel_id]
            self.writer.write(conn, record.log_time, record.data)
            self.counts[conn.topic] += 1
            self.first_ns = record.log_time if self.first_ns is None else min(self.first_ns, record.log_time)
            self.last_ns = record.log_time if self.last_ns is None else max(self.last_ns, record.log_time)

    def _add_channel(self, channel: Channel) -> None:
        schema = self.schemas.get(channel.schema_id)
        if schema is None or channel.message_encoding != "cdr":
            log.warning("skipping channel %s: no schema or not CDR", channel.topic)
            return
        key = (channel.topic, schema.name)
        if key not in self.connections:
            text = schema.data.decode()
            qos = parse_qos(channel.metadata.get("offered_qos_profiles", ""))
            self.connections[key] = self.writer.add_connection(
                channel.topic, schema.name, msgdef=text, rihs01=_type_hash(schema.name, schema.encoding, text),
                offered_qos_profiles=qos)
        self.by_channel[channel.id] = self.connections[key]


def repair_segment(path, force: bool = False) -> RepairReport:
    """Rebuild one segment (bag directory) from the complete records of its MCAP file(s).

    A segment that is complete is left alone (one whose metadata was written but whose MCAP file was cut
    short, e.g. by a full disk or a partial copy, or whose summary or footer is damaged, is rebuilt); one
    whose lock a live writer holds is skipped unless ``force``. Corrupt or unsupported data gives a ``failed`` report, never an exception.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no segment directory at {path}")
    state = segment_state(path)
    if state == "complete" and all(has_mcap_footer(f) and not summary_damaged(f) for f in path.glob("*.mcap")):
        return RepairReport(path, "complete")
    if state == "open" and not force:
        return RepairReport(path, "active", note="a live writer holds its lock; use force to override")
    if (path / METADATA_NAME).exists() and _opens(path):
        (path / LOCK_NAME).unlink(missing_ok=True)
        return RepairReport(path, "complete", note="metadata was intact; removed the stale lock")
    sources = sorted(path.glob("*.mcap"))
    if not sources:
        other = ", ".join(p.name for p in path.iterdir()) or "nothing"
        return RepairReport(path, "failed", note=f"no .mcap file to repair (found {other})")
    try:
        return _rebuild(path, sources)
    except (OSError, ValueError, McapError) as err:
        return RepairReport(path, "failed", note=f"{type(err).__name__}: {err}")


def _opens(path: Path) -> bool:
    try:
        with Reader(path):
            return True
    except Exception:  # rosbags raises several types for damaged bags
        return False


def _rebuild(path: Path, sources: list[Path]) -> RepairReport:
    staging_parent = path.parent / f".repair-{path.name}"
    shutil.rmtree(staging_parent, ignore_errors=True)
    staging_parent.mkdir()
    rebuilt = None
    try:
        rebuilt = _BagRebuilder(staging_parent / path.name)
        discarded, note = 0, ""
        for source in sources:
            stats = {"end": len(MCAP_MAGIC)}
            try:
                for record in _records(source, stats):
                    rebuilt.add(record)
            except (McapError, ValueError, struct.error, UnicodeDecodeError) as err:
                note = f"stopped at a corrupt record in {source.name}: {type(err).__name__}: {err}"
            if stats.get("damaged_chunks"):
                skipped = stats["damaged_chunks"]
                note = "; ".join(filter(None, [note, f"{skipped} damaged chunk{'s' * (skipped != 1)} in "
                                                     f"{source.name} skipped"]))
            discarded += max(0, source.stat().st_size - stats["end"]) if not has_mcap_footer(source) else 0
        rebuilt.writer.set_custom_data("vla_driver.repair", json.dumps(
            {"sources": [s.name for s in sources], "discarded_bytes": discarded, "note": note}))
        rebuilt.writer.close()
        _swap_in(path, staging_parent / path.name)
    except BaseException:
        if rebuilt is not None:
            with suppress(Exception):
                rebuilt.writer.abort()
        raise
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)
    return RepairReport(path, "repaired", sum(rebuilt.counts.values()), dict(rebuilt.counts),
                        rebuilt.first_ns, rebuilt.last_ns, discarded, note)


def summary_damaged(source: Path) -> bool:
    """Whether an MCAP file's footer or summary (where readers find its chunks) cannot be parsed."""
    try:
        with source.open("rb") as f:
            SeekingReader(f, validate_crcs=True).get_summary()
        return False
    except Exception:  # noqa: BLE001 - whatever a damaged summary makes the parser raise
        return True


def has_mcap_footer(source: Path) -> bool:
    """Whether an MCAP file ends in its magic, as a file its writer closed does."""
    with source.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 2 * len(MCAP_MAGIC):
            return False
        f.seek(-len(MCAP_MAGIC), os.SEEK_END)
        return f.read() == MCAP_MAGIC


def _swap_in(path: Path, rebuilt: Path) -> None:
    """Replace the broken directory by the rebuilt bag, keeping the KEEP flag."""
    kept = (path / KEEP_NAME).exists()
    broken = path.parent / f".broken-{path.name}"
    shutil.rmtree(broken, ignore_errors=True)
    path.rename(broken)
    rebuilt.rename(path)
    if kept:
        (path / KEEP_NAME).touch()
    shutil.rmtree(broken)


def repair_all(root, force: bool = False, progress: bool = True) -> list[RepairReport]:
    """Repair every crashed segment under ``root``; open ones are reported as active and left alone."""
    todo = [s for s in list_segments(Path(root)) if s.state != "complete"]
    reports = []
    for info in tqdm(todo, desc="repair", unit="segment", disable=None if progress else True, leave=False):
        report = repair_segment(info.path, force=force)
        log.info(report.summary())
        reports.append(report)
    return reports
