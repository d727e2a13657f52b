"""The drive a replay plays: a bag's topics matched to the nodes' inputs, checked before anything runs.

Topics are matched to roles by the experience schema's names (``experience.reader.TopicMap`` defaults:
``/camera/image_raw``, ``/odom``, ``/navigation``, ...; a rig model's cameras ``/camera/<name>/image_raw``);
``remaps`` rename bag topics first (``{"/carla/ego_vehicle/rgb_front/image": "/camera/front/image_raw"}``).
A camera's role is the topic the model nodes subscribe it on (``image`` for the top-down models,
``camera/<name>/image_raw`` for a rig's). ``/clock`` follows the first camera's header stamps.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..experience import messages as m
from ..experience.bag_open import BagError, LeftOut, open_bags
from ..experience.messages import header_stamp_ns
from ..experience.reader import ROLE_TYPES, MissingTopicError, TopicMap, find_bags, timelines
from ..nodes.camera_set import LEGACY_CAMERA, camera_topic

PLAYED = ("odom", "navigation")  # roles fed to the nodes besides the cameras


def parse_remaps(items) -> dict[str, str]:
    """``["/image:=/camera/image_raw", ...]`` -> ``{"/image": "/camera/image_raw"}``."""
    out = {}
    for item in items or ():
        old, sep, new = str(item).partition(":=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"remap {item!r} must look like OLD:=NEW, e.g. /image:=/camera/image_raw")
        out[old.strip()] = new.strip()
    return out


@dataclass
class BagInput:
    """One drive to replay: its bags (one timeline), the bag topic playing each role, and its clock."""

    bags: list[Path]
    topics: dict[str, str]  # role -> topic name in the bag
    types: dict[str, str]  # role -> message type
    available: dict[str, str]  # every topic in the bag -> type
    clock_offset_ns: int  # camera header stamps minus bag time: /clock follows the stamps
    start_ns: int
    end_ns: int
    frames: int  # of the first camera
    cameras: tuple[str, ...] = (LEGACY_CAMERA,)  # camera roles, in the rig's order
    schema: dict[str, str] | None = None  # role -> the experience schema's topic (where a replay records it)
    left_out: LeftOut = field(default_factory=LeftOut)  # topics left out at open, damaged chunks as they are read

    @property
    def played(self) -> tuple[str, ...]:
        """The roles fed to the nodes: every camera, odometry and (if the bag has it) navigation."""
        return (*self.cameras, *(r for r in PLAYED if r in self.topics))

    @property
    def skipped(self) -> Counter:
        """``skipped_topics`` and ``damaged_chunks`` of the bag, as far as it has been read."""
        return self.left_out.counts()

    @property
    def source(self) -> str:
        return self.bags[0].name if len(self.bags) == 1 else f"{self.bags[0].name} .. {self.bags[-1].name}"

    def messages(self, roles=None) -> Iterator[tuple[str, int, bytes]]:
        """(role, time on the stamp clock in ns, CDR bytes) of ``roles`` (default: the played ones), in time order."""
        by_topic = {self.topics[r]: r for r in roles or self.played if r in self.topics}
        with open_bags(self.bags) as reader:
            conns = [c for c in reader.connections if c.topic in by_topic]
            try:
                for conn, t_ns, raw in reader.messages(connections=conns):
                    yield by_topic[conn.topic], t_ns + self.clock_offset_ns, bytes(raw)
            finally:
                self.left_out.add(reader.left_out)


def open_bag_input(path, remaps: dict[str, str] | None = None, cameras: tuple[str, ...] | None = None) -> BagInput:
    """Check that the bag can be replayed to a model driving from ``cameras`` (a rig's names; None: the
    top-down models' one camera); a missing camera or odometry raises ``MissingTopicError``."""
    remaps = remaps or {}
    schema_map = TopicMap.for_cameras(cameras)
    camera_roles = tuple(camera_topic(n) for n in cameras) if cameras else (LEGACY_CAMERA,)
    schema = {**dict(zip(camera_roles, (schema_map.image, *schema_map.more_cameras), strict=True)),
              **{r: t for r, t in schema_map.roles().items() if r != "image"}}
    try:
        groups = timelines(find_bags(path))
        if len(groups) != 1:
            raise ValueError(f"{path} holds {len(groups)} separate drives; replay one bag or one route at a time")
        bags = groups[0]
        source = bags[0].name if len(bags) == 1 else f"{bags[0].name} .."
        return _check_bag(bags, source, path, remaps, schema, camera_roles, cameras)
    except BagError as err:  # e.g. a serialization other than cdr, a damaged file: one line, not a traceback
        raise ValueError(f"{path}: cannot be replayed: {err}") from None


def _check_bag(bags: list[Path], source: str, path, remaps: dict[str, str], schema: dict[str, str],
               camera_roles: tuple[str, ...], cameras: tuple[str, ...] | None) -> BagInput:
    with open_bags(bags) as reader:
        if not reader.is2:
            raise ValueError(f"{path}: ROS 1 bags cannot be replayed into ROS 2 nodes")
        infos = reader.topics
        available = {name: info.msgtype or "?" for name, info in infos.items()}
        unknown = sorted(set(remaps) - set(infos))
        if unknown:
            raise ValueError(f"{source}: cannot remap {', '.join(unknown)}: not in the bag; it has "
                             + ", ".join(sorted(available)))
        named = {remaps.get(name, name): name for name in infos}
        topics, types = {}, {}
        for role, wanted in schema.items():
            kind = "image" if role in camera_roles else role
            name = named.get(wanted)
            if name is None or infos[name].msgcount == 0:
                if role in camera_roles:
                    label = f"camera {role.split('/')[1]!r} of the model's rig" if cameras else "image"
                    raise MissingTopicError(wanted, label, available, source)
                if role == "odom":
                    raise MissingTopicError(wanted, role, available, source)
                continue
            if infos[name].msgtype not in ROLE_TYPES[kind]:
                raise ValueError(f"{source}: topic {name} ({role}) is {infos[name].msgtype}, expected one of "
                                 f"{', '.join(ROLE_TYPES[kind])}")
            topics[role], types[role] = name, infos[name].msgtype
        first = camera_roles[0]
        offsets = []
        image_conns = [c for c in reader.connections if c.topic == topics[first]]
        for conn, t_ns, raw in reader.messages(connections=image_conns):
            offsets.append(header_stamp_ns(raw, conn.msgtype) - t_ns)
            if len(offsets) >= 100:
                break
        if not offsets:  # every chunk holding a frame was damaged
            raise BagError(f"{source}: no frame of {topics[first]} can be read")
        offset = sorted(offsets)[len(offsets) // 2]  # median, in integers: float64 cannot hold ns at 1e18
        return BagInput(bags, topics, types, available, offset, reader.start_time,
                        reader.end_time, infos[topics[first]].msgcount, camera_roles, schema, reader.left_out)


def raw_image_cdr(raw: bytes, msgtype: str) -> bytes:
    """The frame as a sensor_msgs/Image (what the nodes subscribe); compressed frames are decoded."""
    if msgtype == m.IMAGE:
        return raw
    msg = m.deserialize(raw, msgtype)
    return m.image_message(m.decode_image(msg), m.time_to_ns(msg.header.stamp), msg.header.frame_id or "camera")
