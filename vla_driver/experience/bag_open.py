"""Every bag the commands read is opened here: a reader they can use, or a :class:`BagError` whose message is
one line naming the bag and what is wrong with it. rosbags raises whatever a damaged file makes its parsers
raise (struct errors, UTF-8 errors, OverflowError on a mangled length, ...); a mutated-bag fuzz test keeps
that from reaching a user as a traceback."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rosbags.highlevel import AnyReader

from . import messages as m


class BagError(ValueError):
    """A bag, or a part of one, that cannot be read."""


class SafeReader:
    """The parts of rosbags' AnyReader the commands use, with every failure of the file a BagError."""

    def __init__(self, reader: AnyReader, name: str):
        self._reader, self.name = reader, name

    def __getattr__(self, attr):  # topics, connections, is2, start_time, end_time: read at open
        return getattr(self._reader, attr)

    def messages(self, connections=()) -> Iterator:
        """(connection, time ns, raw CDR) in time order; a damaged chunk ends the read with a BagError."""
        stream, count = self._reader.messages(connections=connections), 0
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
    try:
        reader = AnyReader(bags, default_typestore=m.TYPESTORE)
        reader.open()
    except Exception as err:  # noqa: BLE001 - AnyReaderError, or a parser's error on a damaged file
        raise BagError(f"{name}: cannot be read ({_why(err)})") from None
    try:
        yield SafeReader(reader, name)
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001 - closing a damaged file must not hide why it failed
            pass


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'}"
