"""Every bag the commands read is opened here: a reader they can use, or a :class:`BagError` whose message is
one line naming the bag and what is wrong with it. rosbags raises whatever a damaged file makes its parsers
raise (struct errors, UTF-8 errors, OverflowError on a mangled length, ...); a mutated-bag fuzz test keeps
that from reaching a user as a traceback.

What cannot be read is left out and counted (:class:`LeftOut`, ``reader.left_out`` / ``reader.skipped``)
instead of losing the whole bag: topics rosbags cannot decode (the service events and non-CDR topics a bag
recorded by ROS's own rosbag2 may hold, types without a usable definition), and MCAP chunks too damaged to
read. Only a bag with no readable topic, or whose files cannot be opened at all, is refused.
"""
from __future__ import annotations

import copy
import heapq
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path, PurePath

import yaml
from rosbags.highlevel import AnyReader
from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from . import messages as m
from .repair import has_mcap_footer, summary_damaged

log = logging.getLogger(__name__)

SERVICE_EVENT_TYPE = re.compile(r"/srv/\w+_Event$")  # a service's introspection topic, e.g. pkg/srv/Foo_Event
IDL_SEPARATOR = "=" * 80 + "\n"  # between the IDL files of one ros2idl definition


class BagError(ValueError):
    """A bag, or a part of one, that cannot be read."""


@dataclass
class LeftOut:
    """What a read left out of a bag, and why: topics it cannot decode, MCAP chunks too damaged to read."""

    topics: dict[str, str] = field(default_factory=dict)  # topic -> why
    chunks: set[tuple[str, int]] = field(default_factory=set)  # (file, byte offset) of each damaged chunk

    def __bool__(self) -> bool:
        return bool(self.topics or self.chunks)

    def counts(self) -> Counter:
        """``skipped_topics`` and ``damaged_chunks``, the ones that are not zero."""
        return +Counter(skipped_topics=len(self.topics), damaged_chunks=len(self.chunks))

    def add(self, other: LeftOut) -> None:
        self.topics.update(other.topics)
        self.chunks |= other.chunks

    def note(self) -> str:
        """One line for the user, e.g. "skipped 2 topics: /a/_service_event (service event), /b (serialization
        'json')"; empty when nothing was left out."""
        parts = []
        if self.topics:
            named = ", ".join(f"{topic} ({why})" for topic, why in sorted(self.topics.items()))
            parts.append(f"skipped {_count(len(self.topics), 'topic')}: {named}")
        if self.chunks:
            parts.append(f"skipped {_count(len(self.chunks), 'damaged chunk')} (messages lost)")
        return "; ".join(parts)


class SafeReader:
    """The parts of rosbags' AnyReader the commands use, with every failure of the file a BagError, and what
    the read left out so far in ``left_out``."""

    def __init__(self, reader: AnyReader, name: str, left_out: LeftOut):
        self._reader, self.name, self.left_out = reader, name, left_out

    def __getattr__(self, attr):  # topics, connections, is2, start_time, end_time: read at open
        return getattr(self._reader, attr)

    @property
    def skipped(self) -> Counter:
        """``skipped_topics`` and ``damaged_chunks`` (each chunk once, however often it was read)."""
        return self.left_out.counts()

    def messages(self, connections=()) -> Iterator:
        """(connection, time ns, raw CDR) in time order; a damaged chunk of an indexed MCAP file is skipped
        (counted in ``left_out``), other damage ends the read with a BagError."""
        wanted = connections or self._reader.connections  # never the topics left out
        stream, count = self._reader.messages(connections=wanted), 0
        while True:
            try:
                item = next(stream)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 - anything a damaged file makes the parser raise
                raise BagError(f"{self.name}: damaged after {count} messages ({_why(err)})") from None
            count += 1
            yield item

    def deserialize(self, raw, msgtype: str):
        try:
            return self._reader.deserialize(raw, msgtype)
        except Exception as err:  # noqa: BLE001 - as above
            raise BagError(f"{self.name}: a {msgtype} message cannot be decoded ({_why(err)})") from None


@contextmanager
def open_bags(bags: Sequence[Path]) -> Iterator[SafeReader]:
    """``bags`` (segments of one route, or one bag) as one reader; BagError when they cannot be opened."""
    bags = [Path(b) for b in bags]
    name = bags[0].name if len(bags) == 1 else f"{bags[0].name} .. {bags[-1].name}"
    left_out = LeftOut()
    try:
        reader = _open_readable(bags, left_out)
    except BagError:
        raise
    except Exception as err:  # noqa: BLE001 - AnyReaderError, or a parser's error on a damaged file
        raise BagError(f"{name}: cannot be read ({_why(err)}){_repair_hint(bags)}") from None
    if left_out.topics and not reader.connections:
        _close_quietly(reader)
        raise BagError(f"{name}: no topic that can be read ({left_out.note()})")
    for storage in _mcap_storages(reader):
        _skip_damaged_chunks(storage, partial(_count_damaged_chunk, left_out, name))
    try:
        yield SafeReader(reader, name, left_out)
    finally:
        _close_quietly(reader)


def _open_readable(bags: list[Path], left_out: LeftOut) -> AnyReader:
    """AnyReader over ``bags`` without the topics it cannot decode (named in ``left_out``)."""
    reader = AnyReader(bags, default_typestore=m.TYPESTORE)
    if reader.is2:
        parts = [_ReadableTopics(r, declared) for bag in bags for r, declared in _rosbag2_readers(bag)]
        reader.readers = parts
    reader.open()
    for part in reader.readers:
        left_out.topics.update(getattr(part, "left_out", {}))
    return reader


def _close_quietly(reader: AnyReader) -> None:
    try:
        reader.close()
    except Exception:  # noqa: BLE001 - closing a damaged file must not hide why it failed
        pass


# --- topics rosbags cannot decode ---------------------------------------------------------------------------

class _ReadableTopics:
    """One rosbag2 ``Reader`` as AnyReader uses it (entered as a context, then its connections, topics and
    times), less the topics it cannot decode: AnyReader registers every connection's type when it opens and
    refuses the whole bag when one fails, so those connections are left out before it sees them."""

    def __init__(self, reader: Reader, declared: dict[str, str]):
        self._reader, self._declared = reader, declared  # declared: topic -> why, from metadata.yaml
        self.connections: list = []
        self.left_out: dict[str, str] = {}

    def __enter__(self) -> _ReadableTopics:
        self._reader.open()
        try:
            for conn in self._reader.connections:
                why = self._declared.get(conn.topic) or _why_unreadable(conn)
                if why:
                    self.left_out.setdefault(conn.topic, why)
        except BaseException:
            self._reader.close()
            raise
        self.connections = [c for c in self._reader.connections if c.topic not in self.left_out]
        return self

    def __exit__(self, *exc) -> bool:
        self._reader.close()
        return False

    @property
    def topics(self) -> dict:
        return {name: info for name, info in self._reader.topics.items() if name not in self.left_out}

    def __getattr__(self, attr):  # start_time, end_time, message_count, storage, ...
        return getattr(self._reader, attr)


def _rosbag2_readers(bag: Path) -> list[tuple[Reader, dict[str, str]]]:
    """rosbag2 readers for ``bag``, each with the topics its metadata.yaml declares in a serialization other
    than CDR. rosbags refuses a whole directory that declares one; its storage files, each opened as a bag of
    its own, name every topic's serialization instead, so the other topics still read. Not where the files
    are compressed whole or per message: rosbags then refuses the bag as before."""
    info = _metadata(bag)
    declared = _declared_not_cdr(info)
    files = [bag / PurePath(str(p)).name for p in info.get("relative_file_paths") or ()]
    if not declared or not files or str(info.get("compression_mode") or "none").lower() != "none":
        return [(Reader(bag), declared)]
    return [(Reader(path), declared) for path in files]


def _metadata(bag: Path) -> dict:
    """metadata.yaml's ``rosbag2_bagfile_information``; empty for a bare file or one rosbags should judge."""
    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    except Exception:  # noqa: BLE001 - no metadata, or damaged: rosbags' own reading says what is wrong
        return {}
    return info if isinstance(info, dict) else {}


def _declared_not_cdr(info: dict) -> dict[str, str]:
    """topic -> why, for each topic the metadata declares in a serialization other than CDR."""
    declared = {}
    for entry in info.get("topics_with_message_count") or ():
        topic = entry.get("topic_metadata") if isinstance(entry, dict) else None
        if isinstance(topic, dict) and topic.get("serialization_format", "cdr") != "cdr":
            declared[str(topic.get("name"))] = f"serialization {topic['serialization_format']!r}"
    return declared


def _why_unreadable(conn) -> str | None:
    """Why AnyReader could not decode ``conn``'s messages, or None. Without an embedded definition a type
    must be one of the default typestore's (as rosbags reads a bag that has no definitions at all)."""
    serialization = getattr(conn.ext, "serialization_format", "cdr")
    if serialization != "cdr":
        return f"serialization {serialization!r}"
    if conn.msgdef.format == MessageDefinitionFormat.NONE:
        return None if conn.msgtype in m.TYPESTORE.fielddefs else "unknown type"
    why = _definition_problem(conn.msgdef.format, conn.msgdef.data, conn.msgtype, conn.digest)
    return "service event" if why and SERVICE_EVENT_TYPE.search(conn.msgtype) else why


@lru_cache(maxsize=256)
def _definition_problem(fmt: MessageDefinitionFormat, text: str, msgtype: str, digest: str) -> str | None:
    """What keeps an embedded definition from giving AnyReader ``msgtype``, parsed as it parses it at open
    (rosbags reads a service event's ``pkg/srv/Foo_Event`` as ``pkg/srv/msg/Foo_Event``), or None."""
    try:
        store = get_typestore(Stores.EMPTY)
        store.register(_declared_types(fmt, text, msgtype))
        if msgtype not in store.fielddefs:
            return "definition does not declare its type"
        if digest and store.hash_rihs01(msgtype) != digest:
            return "type hash mismatch"
    except Exception as err:  # noqa: BLE001 - a parser's error on a definition it does not understand
        return f"definition not understood: {_why(err)}"
    return None


def _declared_types(fmt: MessageDefinitionFormat, text: str, msgtype: str) -> dict:
    if fmt == MessageDefinitionFormat.MSG:
        return get_types_from_msg(text, msgtype)
    types = {}
    for part in text.split(IDL_SEPARATOR)[1:] if text.startswith(IDL_SEPARATOR + "IDL: ") else [text]:
        types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
    return types


# --- damaged chunks -----------------------------------------------------------------------------------------

def _mcap_storages(reader: AnyReader) -> Iterator[McapReader]:
    """The MCAP files under an open AnyReader (a directory's files, or a bare file); none for ROS 1."""
    for part in reader.readers:
        storage = getattr(part, "storage", None)
        for one in getattr(storage, "storages", [storage]):
            if isinstance(one, McapReader):
                yield one


def _skip_damaged_chunks(storage: McapReader, on_damage: Callable[[Path, int, Exception], None]) -> None:
    """Have an indexed MCAP file skip a chunk it cannot read (bad CRC, bad compression, a mangled record),
    calling ``on_damage(file, chunk offset, error)``, instead of ending the read there.

    Written against rosbags 0.11.9, whose ``McapReader.messages`` reads the chunks listed in its ``chunks``
    (one ``ChunkInfo`` each) and lets the first one that fails end the read: each chunk is read here through
    a shallow copy of the storage that lists only it. Where the storage is not like that (another rosbags,
    an unindexed file), nothing changes and a damaged chunk ends the read with a BagError, as before.
    """
    chunks = getattr(storage, "chunks", None)
    if not isinstance(chunks, list) or not chunks or not all(
            hasattr(c, "message_start_time") and hasattr(c, "chunk_start_offset") for c in chunks):
        return
    storage.messages = partial(_chunk_by_chunk, storage, on_damage)


def _chunk_by_chunk(storage: McapReader, on_damage, connections, start=None, stop=None) -> Iterator[tuple]:
    """``storage.messages`` merged in time order from one guarded stream per chunk; a chunk is read only
    when the merge reaches its first message time (its marker), so one chunk at a time is in memory."""
    streams = [_chunk_stream(storage, chunk, connections, start, stop, on_damage) for chunk in storage.chunks]
    for _, item in heapq.merge(*streams, key=lambda entry: entry[0]):
        if item is not None:
            yield item


def _chunk_stream(storage: McapReader, chunk, connections, start, stop, on_damage) -> Iterator[tuple]:
    yield chunk.message_start_time, None  # the marker
    one = copy.copy(storage)
    one.chunks = [chunk]
    try:
        for item in McapReader.messages(one, connections, start, stop):
            yield item[1], item
    except Exception as err:  # noqa: BLE001 - whatever a damaged chunk makes the parser raise
        on_damage(storage.path, chunk.chunk_start_offset, err)


def _count_damaged_chunk(left_out: LeftOut, name: str, file, offset: int, err: Exception) -> None:
    if (str(file), offset) not in left_out.chunks:
        log.debug("%s: skipping the damaged chunk at byte %d of %s (%s)", name, offset, Path(file).name,
                  _why(err))
    left_out.chunks.add((str(file), offset))


# --- a file cut short ---------------------------------------------------------------------------------------

def _repair_hint(bags: list[Path]) -> str:
    """What may make an unreadable MCAP bag readable again: ``logs repair`` rebuilds it from the records it can
    read (a file cut short when its writer was killed; a damaged summary, index or footer)."""
    for bag in bags:
        try:
            files = sorted(bag.glob("*.mcap")) if bag.is_dir() else [bag] if bag.suffix == ".mcap" else []
            cut = next((f for f in files if not has_mcap_footer(f)), None)
            folder = bag if bag.is_dir() else "its folder"
            if cut is not None:
                return f"; {cut.name} is cut short (no MCAP footer): run `vla-driver logs repair {folder}`"
            if bag.is_dir() and any(summary_damaged(f) for f in files):
                return f"; `vla-driver logs repair {bag}` rebuilds it from the records it can still read"
        except OSError:
            continue
    return ""


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'}"
