"""One reader for every bag: rosbag2 directories (MCAP or sqlite3, one or many files) -> training samples.

``read_samples`` cuts a drive into :class:`ExperienceSample` s: what the car saw at t, what the policy
decided and planned from it, and what the car then actually did over the next ``horizon_s`` (from
odometry), plus takeovers and events in that window. docs/experience.md states the rules exactly.
Segments of one route (``<route>--0``, ``--1``, ...) are read as one timeline, so a sample near the end of
a segment still gets its future from the next one.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from ..core.camera_rig import camera_topic
from ..core.ego import filtered_accel_series
from ..core.frame_history import history_picks, stack_history
from ..core.trajectory import future_poses_to_ego
from ..core.types import Observation
from ..core.vocabulary import ANSWER_SEPARATOR, DecisionVocabulary
from . import messages as m
from .bag_open import LeftOut, SafeReader, open_bags
from .messages import header_stamp_ns
from .segments import METADATA_NAME, SEGMENT_NAME_RE, segment_age_key, segment_state

log = logging.getLogger(__name__)

STAMP_MATCH_NS = 20_000_000  # header stamps closer than this name the same camera frame
MAX_IMAGE_AGE_NS = 1_000_000_000  # a grid anchor without a camera frame this recent is skipped


class MissingTopicError(LookupError):
    """A needed topic is absent (or empty) in the bag; the message lists what the bag has."""

    def __init__(self, topic: str, role: str, available: dict[str, str], source: str):
        self.topic, self.role, self.available = topic, role, available
        have = ", ".join(f"{name} [{typ}]" for name, typ in sorted(available.items())) or "no topics"
        super().__init__(f"{source}: needed topic {topic!r} ({role}) has no messages; the bag has: {have}")

    def __str__(self) -> str:  # LookupError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class TopicMap:
    """Topic name per role; ``None`` disables a role. Roles in ``required`` must have messages."""

    image: str | None = "/camera/image_raw"
    odom: str | None = "/odom"
    navigation: str | None = "/navigation"
    decision: str | None = "/vla/decision"
    trajectory: str | None = "/vla/trajectory"
    takeover: str | None = "/vla/takeover"
    cmd_vel: str | None = "/cmd_vel"
    events: str | None = "/vla/events"
    required: tuple[str, ...] = ("image", "odom")
    # a rig's cameras beyond the first, whose frames join the first camera's (``image``) in each sample
    more_cameras: tuple[str, ...] = ()

    def roles(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("required", "more_cameras") and getattr(self, f.name)}

    @classmethod
    def for_cameras(cls, names: tuple[str, ...] | None, **roles) -> TopicMap:
        """The map of a rig's bag: one recorded topic per camera (``recorded_camera_topic``), in the rig's order;
        ``names`` None: the one camera of the top-down models."""
        if not names:
            return cls(**roles)
        return cls(image=recorded_camera_topic(names[0]),
                   more_cameras=tuple(recorded_camera_topic(n) for n in names[1:]), **roles)


def recorded_camera_topic(name: str, stream: str = "image_raw") -> str:
    """Where a rig camera's messages are recorded: its topic under ``/`` (the top-down models' one camera is
    ``/camera/image_raw``)."""
    return "/" + camera_topic(name, stream)


ROLE_TYPES = {
    "image": (m.IMAGE, m.COMPRESSED_IMAGE), "odom": (m.ODOMETRY,), "navigation": (m.STRING,),
    "decision": (m.STRING,), "trajectory": (m.PATH,), "takeover": (m.BOOL,),
    "cmd_vel": (m.TWIST, "geometry_msgs/msg/TwistStamped"), "events": (m.STRING,),
}


@dataclass
class LoggedDecision:
    """The decision JSON logged on /vla/decision (see core.types.DecisionResult.to_json_dict)."""

    speed: str
    path: str
    reasoning: str = ""
    log_prob: float = float("nan")
    probabilities: dict[str, float] = field(default_factory=dict)  # "SPEED, PATH" -> p
    model_version: str = ""
    latency_ms: float = float("nan")
    stamp: float | None = None  # header stamp (s) of the camera frame it was decided from
    logged_at: float = 0.0  # bag time (s)

    @classmethod
    def from_json(cls, text: str, logged_at: float = 0.0) -> LoggedDecision:
        d = json.loads(text)
        if not isinstance(d, dict) or "speed" not in d or "path" not in d:
            raise ValueError(f"decision JSON needs 'speed' and 'path': {text[:80]!r}")
        probs = {str(k): float(v) for k, v in (d.get("probabilities") or {}).items()}
        stamp = d.get("stamp")
        return cls(str(d["speed"]), str(d["path"]), str(d.get("reasoning", "")),
                   float(d.get("log_prob", float("nan"))), probs, str(d.get("model_version", "")),
                   float(d.get("latency_ms", float("nan"))), None if stamp is None else float(stamp), logged_at)

    @property
    def log_probs(self) -> dict[str, float]:
        """Log-probability of every logged candidate (p floored at 1e-12)."""
        return {k: math.log(max(p, 1e-12)) for k, p in self.probabilities.items()}

    def table(self, vocab: DecisionVocabulary) -> np.ndarray:
        """(num_speeds, num_paths) probabilities in ``vocab`` order; candidates not logged are 0."""
        return np.array([[self.probabilities.get(f"{s}{ANSWER_SEPARATOR}{p}", 0.0) for p in vocab.paths]
                         for s in vocab.speeds], dtype=np.float64)


@dataclass
class ExperienceSample:
    stamp: float  # bag time (s) of the observation: the anchor t
    image: np.ndarray  # (H, W, 3) uint8 RGB
    speed: float  # m/s at t (odometry)
    accel: float  # m/s^2 at t: the decision node's causal filter (core.ego) over the odometry up to t
    yaw_rate: float  # rad/s at t
    navigation: str  # latest route instruction at or before t
    decision: LoggedDecision | None  # the decision made from this frame
    trajectory: np.ndarray | None  # (N, 3) the logged plan, ego frame
    future_motion: np.ndarray  # (N, 3) where the car actually went, ego frame at t, at (k + 1) * dt
    takeover: bool  # a human was in control at some point in [t, t + horizon]
    intervention: bool  # a takeover started in (t, t + horizon]
    intervention_after_s: float | None
    events: list[tuple[float, str]]  # (seconds after t, text) in [t, t + horizon]
    command: tuple[float, float] | None  # latest cmd_vel (linear.x, angular.z) at or before t
    image_stamp: float  # header stamp (s) of the camera frame
    source: str  # bag or route name

    def observation(self) -> Observation:
        return Observation(self.image, self.speed, self.navigation, self.accel, self.yaw_rate, self.image_stamp)


class BagMessage(NamedTuple):
    topic: str
    t_ns: int
    msgtype: str
    msg: object


# --- finding bags --------------------------------------------------------------------------------------

def find_bags(paths) -> list[Path]:
    """Bag directories (or bare .mcap/.db3 files) named by ``paths``. A folder expands to the complete
    segments below it at any depth (a logger root, or a folder with one sub-folder per drive); open or
    unrepaired segments are skipped with a warning."""
    out = []
    for path in [paths] if isinstance(paths, str | Path) else list(paths):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no bag at {path}")
        if path.is_file() or (path / METADATA_NAME).exists():
            out.append(path)
            continue
        if any(path.glob("*.mcap")):  # split files without metadata.yaml: a segment its writer never closed
            raise FileNotFoundError(f"{path} is a segment that was never closed (no {METADATA_NAME}): "
                                    f"a crashed drive; run `vla-driver logs repair {path}` first")
        bags, skipped = _bags_below(path)
        if skipped:
            log.warning("skipping %d open or unrepaired segments in %s (run `vla-driver logs repair`): %s",
                        len(skipped), path, ", ".join(skipped[:5]))
        if not bags and not skipped:
            raise FileNotFoundError(f"{path} is neither a bag nor a folder of bags")
        out.extend(bags)
    return out


def _bags_below(folder: Path) -> tuple[list[Path], list[str]]:
    """Complete segments below ``folder`` (oldest first within each folder) and the names of open ones."""
    bags, skipped = [], []
    for child in sorted((c for c in folder.iterdir() if c.is_dir()), key=segment_age_key):
        if (child / METADATA_NAME).exists() and segment_state(child) == "complete":
            bags.append(child)
        elif any(child.glob("*.mcap")):
            skipped.append(child.name)
        else:
            deeper, deeper_skipped = _bags_below(child)
            bags.extend(deeper)
            skipped.extend(deeper_skipped)
    return bags, skipped


def timelines(bags: Sequence[Path]) -> list[list[Path]]:
    """Group segments of one route (same name up to ``--N``) into one timeline; other bags stand alone."""
    groups: dict[str, list[Path]] = {}
    for bag in bags:
        match = SEGMENT_NAME_RE.search(bag.name)
        key = str(bag.parent / bag.name[: match.start(3) - 2]) if match else str(bag)
        groups.setdefault(key, []).append(bag)
    return list(groups.values())


def _source_name(bags: Sequence[Path]) -> str:
    return bags[0].name if len(bags) == 1 else f"{bags[0].name} .. {bags[-1].name}"


def iter_messages(paths, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Deserialized messages of ``topics`` (all if None), in time order within each timeline."""
    wanted = None if topics is None else set(topics)
    for bags in timelines(find_bags(paths)):
        with open_bags(bags) as reader:
            available = {name: info.msgtype for name, info in reader.topics.items()}
            for topic in sorted((wanted or set()) - set(available)):
                raise MissingTopicError(topic, "requested", available, _source_name(bags))
            conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
            for conn, t_ns, raw in reader.messages(connections=conns):
                yield BagMessage(conn.topic, t_ns, conn.msgtype, reader.deserialize(raw, conn.msgtype))
            if reader.left_out:
                log.warning("%s: %s", reader.name, reader.left_out.note())


# --- cutting samples -----------------------------------------------------------------------------------

@dataclass
class _Timeline:
    """Everything but the pixels, as sorted arrays on the bag clock (ns)."""

    odom_t: np.ndarray
    odom: np.ndarray  # (K, 5): x, y, unwrapped yaw, speed, yaw rate
    image_t: np.ndarray
    image_header: np.ndarray
    image_order: np.ndarray  # position of each (time-sorted) frame in the camera topic's message stream
    navigation_t: np.ndarray
    navigation: list[str]
    decisions: list[LoggedDecision]
    decision_t: np.ndarray
    path_t: np.ndarray
    path_header: np.ndarray
    paths: list[np.ndarray]
    takeover_t: np.ndarray
    takeover: np.ndarray
    command_t: np.ndarray
    commands: np.ndarray
    event_t: np.ndarray
    events: list[str]


def _check_topics(reader: SafeReader, topic_map: TopicMap, source: str) -> dict[str, str]:
    """role -> topic for the roles present; raises for a missing required role or a wrong type."""
    infos = reader.topics
    available = {name: info.msgtype or "?" for name, info in infos.items()}
    present = {}
    for role, topic in topic_map.roles().items():
        info = infos.get(topic)
        if info is None or info.msgcount == 0:
            if role in topic_map.required:
                raise MissingTopicError(topic, role, available, source)
            continue
        if info.msgtype not in ROLE_TYPES[role]:
            raise ValueError(f"{source}: topic {topic} ({role}) is {info.msgtype}, expected one of "
                             f"{', '.join(ROLE_TYPES[role])}")
        present[role] = topic
    for role in topic_map.required:
        if role not in topic_map.roles():
            raise ValueError(f"required role {role!r} has no topic in the TopicMap")
    return present


def _collect(reader: SafeReader, present: dict[str, str], progress: bool, skipped: Counter) -> _Timeline:
    role_of = {topic: role for role, topic in present.items()}
    conns = [c for c in reader.connections if c.topic in role_of and c.topic != present["image"]]
    image_conns = [c for c in reader.connections if c.topic == present["image"]]
    odom, image, nav, dec, paths, take, cmd, events = [], [], [], [], [], [], [], []
    total = sum(c.msgcount for c in conns + image_conns)
    bar = tqdm(total=total, desc="reading bag", unit="msg", disable=None if progress else True, leave=False)
    for conn, t_ns, raw in reader.messages(connections=conns + image_conns):
        bar.update()
        role = role_of[conn.topic]
        try:
            msg = reader.deserialize(raw, conn.msgtype)
            if role == "image":
                image.append((t_ns, m.time_to_ns(msg.header.stamp), len(image)))
            elif role == "odom":
                odom.append((t_ns, *m.decode_odometry(msg)))
            elif role == "navigation":
                nav.append((t_ns, msg.data))
            elif role == "decision":
                dec.append((t_ns, LoggedDecision.from_json(msg.data, t_ns / 1e9)))
            elif role == "trajectory":
                paths.append((t_ns, m.time_to_ns(msg.header.stamp), m.decode_path(msg)))
            elif role == "takeover":
                take.append((t_ns, bool(msg.data)))
            elif role == "cmd_vel":
                twist = getattr(msg, "twist", msg)
                cmd.append((t_ns, twist.linear.x, twist.angular.z))
            else:
                events.append((t_ns, msg.data))
        except Exception as err:  # one bad message must not lose the drive
            skipped[f"bad_{role}"] += 1
            log.debug("skipping a %s message at %d: %s", role, t_ns, err)
    bar.close()
    for rows in (odom, image, nav, dec, paths, take, cmd, events):
        rows.sort(key=lambda r: r[0])
    odom_arr = np.array([r[1:] for r in odom], dtype=np.float64).reshape(-1, 5)
    odom_t = _column(odom, 0)
    if len(odom_arr):
        odom_arr[:, 2] = np.unwrap(odom_arr[:, 2])
        _fill_twist_from_poses(odom_t, odom_arr)
    return _Timeline(
        odom_t, odom_arr, _column(image, 0), _column(image, 1), _column(image, 2),
        _column(nav, 0), [r[1] for r in nav], [r[1] for r in dec], _column(dec, 0),
        _column(paths, 0), _column(paths, 1), [r[2] for r in paths],
        _column(take, 0), _column(take, 1, bool),
        _column(cmd, 0), np.array([r[1:] for r in cmd], dtype=np.float64).reshape(-1, 2),
        _column(events, 0), [r[1] for r in events],
    )


def _column(rows: list[tuple], i: int, dtype=np.int64) -> np.ndarray:
    return np.array([r[i] for r in rows], dtype=dtype)


def _fill_twist_from_poses(t_ns: np.ndarray, odom: np.ndarray) -> None:
    """Some sources leave the odometry twist at zero: differentiate the poses instead."""
    if len(t_ns) < 3 or np.any(np.abs(odom[:, 3:]) > 1e-9):
        return
    t = (t_ns - t_ns[0]) / 1e9
    if np.any(np.diff(t) <= 0):
        return
    dx, dy = np.gradient(odom[:, 0], t), np.gradient(odom[:, 1], t)
    odom[:, 3] = dx * np.cos(odom[:, 2]) + dy * np.sin(odom[:, 2])
    odom[:, 4] = np.gradient(odom[:, 2], t)


def _latest(times: np.ndarray, t_ns: int) -> int | None:
    """Index of the last entry at or before ``t_ns``."""
    i = int(np.searchsorted(times, t_ns, side="right")) - 1
    return i if i >= 0 else None


def _nearest(values: np.ndarray, target: int, tol: int) -> int | None:
    if len(values) == 0:
        return None
    i = int(np.argmin(np.abs(values - target)))
    return i if abs(int(values[i]) - target) <= tol else None


def _anchors(tl: _Timeline, period_ns: int) -> list[tuple[int, int | None]]:
    """(image index, decision index) pairs, thinned to about one per sample period."""
    pairs: list[tuple[int, int | None]] = []
    if tl.decisions:
        for k, d in enumerate(tl.decisions):
            idx = None
            if d.stamp is not None:
                idx = _nearest(tl.image_header, round(d.stamp * 1e9), STAMP_MATCH_NS)
            if idx is None:
                idx = _latest(tl.image_t, int(tl.decision_t[k]))
            if idx is not None:
                pairs.append((idx, k))
    elif len(tl.image_t):
        for g in range(int(tl.image_t[0]), int(tl.image_t[-1]) + 1, period_ns):
            idx = _latest(tl.image_t, g)
            if idx is not None and g - tl.image_t[idx] <= MAX_IMAGE_AGE_NS:
                pairs.append((idx, None))
    pairs.sort(key=lambda p: tl.image_t[p[0]])
    kept, last_t, last_idx = [], None, None
    for idx, k in pairs:
        t = int(tl.image_t[idx])
        if idx == last_idx or (last_t is not None and t < last_t + 0.9 * period_ns):
            continue
        kept.append((idx, k))
        last_t, last_idx = t, idx
    return kept


def _odom_covers(tl: _Timeline, t: int, horizon_ns: int, max_gap_ns: int) -> bool:
    if len(tl.odom_t) < 2 or t < tl.odom_t[0] or t + horizon_ns > tl.odom_t[-1]:
        return False
    i0 = _latest(tl.odom_t, t)
    i1 = int(np.searchsorted(tl.odom_t, t + horizon_ns, side="left"))
    return bool(np.all(np.diff(tl.odom_t[i0: i1 + 1]) <= max_gap_ns))


def _odom_at(tl: _Timeline, times_ns: np.ndarray) -> np.ndarray:
    """(len(times), 5) odometry state linearly interpolated at ``times_ns``."""
    rel = (tl.odom_t - tl.odom_t[0]) / 1e9
    q = (np.asarray(times_ns, dtype=np.int64) - tl.odom_t[0]) / 1e9
    return np.stack([np.interp(q, rel, tl.odom[:, j]) for j in range(5)], axis=-1)


def _trajectory_for(tl: _Timeline, image_idx: int, period_ns: int) -> np.ndarray | None:
    """The plan made from this frame (same header stamp), else the first one logged after it."""
    idx = _nearest(tl.path_header, int(tl.image_header[image_idx]), STAMP_MATCH_NS)
    if idx is None and len(tl.path_t):
        t = int(tl.image_t[image_idx])
        first = int(np.searchsorted(tl.path_t, t, side="left"))
        if first < len(tl.path_t) and tl.path_t[first] - t < period_ns:
            idx = first
    return None if idx is None else tl.paths[idx]


def _window_flags(tl: _Timeline, t: int, end: int) -> tuple[bool, bool, float | None, list[tuple[float, str]]]:
    """Takeover / intervention in [t, end] and the events there (takeover edges included)."""
    lo, hi = np.searchsorted(tl.event_t, t, "left"), np.searchsorted(tl.event_t, end, "right")
    events = [((int(tl.event_t[i]) - t) / 1e9, tl.events[i]) for i in range(lo, hi)]
    i = _latest(tl.takeover_t, t)
    state = bool(tl.takeover[i]) if i is not None else False
    takeover, onset = state, None
    lo, hi = np.searchsorted(tl.takeover_t, t, "right"), np.searchsorted(tl.takeover_t, end, "right")
    for te, value in zip(tl.takeover_t[lo:hi].tolist(), tl.takeover[lo:hi].tolist(), strict=True):
        if value and not state:
            events.append(((te - t) / 1e9, "takeover_start"))
            onset = onset if onset is not None else (te - t) / 1e9
        elif state and not value:
            events.append(((te - t) / 1e9, "takeover_end"))
        state = bool(value)
        takeover = takeover or state
    events.sort(key=lambda e: e[0])
    return takeover, onset is not None, onset, events


def read_samples(paths, topics: TopicMap | None = None, sample_period_s: float = 0.5, horizon_s: float = 3.0,
                 *, waypoint_dt_s: float = 0.5, max_odom_gap_s: float = 0.5, history: int = 1,
                 progress: bool = True) -> list[ExperienceSample]:
    """Training samples from bags (a bag dir, a folder of segments, or a list of them); rules in the docs.
    ``history`` > 1: each sample's image holds that many frames per camera (``core.frame_history``)."""
    topic_map = topics or TopicMap()
    if sample_period_s <= 0 or horizon_s <= 0 or waypoint_dt_s <= 0:
        raise ValueError("sample_period_s, horizon_s and waypoint_dt_s must be positive")
    samples: list[ExperienceSample] = []
    skipped: Counter = Counter()
    groups, left_out = timelines(find_bags(paths)), []
    for bags in groups:
        source = _source_name(bags)
        with open_bags(bags) as reader:
            left_out.append(reader.left_out)  # filled in as the bag is read
            present = _check_topics(reader, topic_map, source)
            if "image" not in present or "odom" not in present:
                skipped["no_image_or_odom"] += 1
                continue
            tl = _collect(reader, present, progress, skipped)
            missing = [t for t in topic_map.more_cameras if t not in reader.topics]
            if missing:
                raise MissingTopicError(missing[0], "image", {n: i.msgtype or "?" for n, i in reader.topics.items()},
                                        source)
            new = _cut(reader, present["image"], tl, source, sample_period_s, horizon_s, waypoint_dt_s,
                       max_odom_gap_s, skipped, topic_map.more_cameras, history)
        samples.extend(new)
    _report_skipped(len(samples), skipped, left_out, len(groups))
    return samples


def _report_skipped(count: int, skipped: Counter, left_out: list[LeftOut], bags: int) -> None:
    """One warning naming what the bags' readers left out (topics, damaged chunks), one line of counts."""
    merged = LeftOut()
    for part in left_out:
        merged.add(part)
    skipped.update(merged.counts())
    if merged:
        log.warning("read_samples: %s (in %d of %d bags)", merged.note(), sum(map(bool, left_out)), bags)
    if skipped:
        log.info("read_samples: %d samples; skipped %s", count, dict(skipped))


def _cut(reader: SafeReader, image_topic: str, tl: _Timeline, source: str, period_s: float, horizon_s: float,
         dt: float, max_gap_s: float, skipped: Counter, more_cameras: tuple[str, ...] = (),
         history: int = 1) -> list[ExperienceSample]:
    period_ns, horizon_ns = int(period_s * 1e9), int(horizon_s * 1e9)
    offsets = np.arange(1, int(round(horizon_s / dt)) + 1) * int(dt * 1e9)
    plans = []
    for idx, k in _anchors(tl, period_ns):
        t = int(tl.image_t[idx])
        if not _odom_covers(tl, t, horizon_ns, int(max_gap_s * 1e9)):
            skipped["odometry_not_covering_horizon"] += 1
            continue
        plans.append((idx, k, t))
    header_s = (tl.image_header / 1e9).tolist()
    # the frames each sample sees, oldest first (the anchor frame last)
    seen = {idx: history_picks(header_s, header_s[idx], history) if history > 1 else [idx] for idx, _, _ in plans}
    wanted = {i for picks in seen.values() for i in picks}
    frames = _decode_images(reader, image_topic, {int(tl.image_order[i]) for i in wanted}, skipped)
    others = [_decode_by_stamp(reader, topic, {int(tl.image_header[i]) for i in wanted}, skipped)
              for topic in more_cameras]
    samples = []
    accel = filtered_accel_series(tl.odom_t / 1e9, tl.odom[:, 3])
    for idx, k, t in plans:
        sets = [_camera_set(i, tl, frames, others, skipped) for i in seen[idx]]
        if any(s is None for s in sets):
            continue
        image = sets[0] if history == 1 else stack_history([s if more_cameras else s[None] for s in sets])
        now = _odom_at(tl, np.array([t]))[0]
        future = _odom_at(tl, t + offsets)
        motion = future_poses_to_ego(future[:, :2], future[:, 2], now[:2], now[2])
        takeover, intervention, onset, events = _window_flags(tl, t, t + horizon_ns)
        nav_i = _latest(tl.navigation_t, t)
        cmd_i = _latest(tl.command_t, t)
        samples.append(ExperienceSample(
            stamp=t / 1e9, image=image, speed=float(now[3]),
            accel=float(accel[_latest(tl.odom_t, t)]), yaw_rate=float(now[4]),
            navigation=tl.navigation[nav_i] if nav_i is not None else "",
            decision=tl.decisions[k] if k is not None else None,
            trajectory=_trajectory_for(tl, idx, period_ns), future_motion=motion,
            takeover=takeover, intervention=intervention, intervention_after_s=onset, events=events,
            command=tuple(float(v) for v in tl.commands[cmd_i]) if cmd_i is not None else None,
            image_stamp=int(tl.image_header[idx]) / 1e9, source=source,
        ))
    return samples


def _camera_set(i: int, tl: _Timeline, frames: dict, others: list[dict], skipped: Counter) -> np.ndarray | None:
    """Frame ``i`` of the first camera, stacked with the rig's other cameras at its instant; None (counted)
    when a frame is missing or a camera's size differs."""
    image = frames.get(int(tl.image_order[i]))
    if image is None or not others:
        return image
    views = [other.get(int(tl.image_header[i])) for other in others]
    if any(v is None or v.shape != image.shape for v in views):
        skipped["camera_set_incomplete"] += 1
        return None
    return np.stack([image, *views])


def _decode_by_stamp(reader: SafeReader, topic: str, stamps: set[int], skipped: Counter) -> dict[int, np.ndarray]:
    """Frames of another camera of the rig whose header stamp is within ``STAMP_MATCH_NS`` of a wanted one,
    keyed by the wanted stamp (a rig's cameras are stamped alike per instant)."""
    wanted = np.array(sorted(stamps), dtype=np.int64)
    frames: dict[int, np.ndarray] = {}
    if not len(wanted):
        return frames
    conns = [c for c in reader.connections if c.topic == topic]
    for conn, _t, raw in reader.messages(connections=conns):
        stamp = header_stamp_ns(raw, conn.msgtype)
        i = int(np.searchsorted(wanted, stamp))
        near = [j for j in (i - 1, i) if 0 <= j < len(wanted) and abs(int(wanted[j]) - stamp) <= STAMP_MATCH_NS]
        if not near:
            continue
        try:
            frames[int(wanted[near[0]])] = m.decode_image(reader.deserialize(raw, conn.msgtype))
        except Exception as err:  # bad pixels lose one sample, not the drive
            skipped["bad_image"] += 1
            log.debug("skipping a frame of %s: %s", topic, err)
    return frames


def _decode_images(reader: SafeReader, topic: str, wanted: set[int], skipped: Counter) -> dict[int, np.ndarray]:
    """Second pass over the camera topic: decode only the frames (by stream position) that anchor a sample."""
    frames: dict[int, np.ndarray] = {}
    if not wanted:
        return frames
    last = max(wanted)
    conns = [c for c in reader.connections if c.topic == topic]
    for i, (conn, _t, raw) in enumerate(reader.messages(connections=conns)):
        if i in wanted:
            try:
                frames[i] = m.decode_image(reader.deserialize(raw, conn.msgtype))
            except Exception as err:  # bad pixels lose one sample, not the drive
                skipped["bad_image"] += 1
                log.debug("skipping camera frame %d: %s", i, err)
        if i >= last:
            break
    return frames
