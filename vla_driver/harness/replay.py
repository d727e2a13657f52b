"""Replay a logged drive through the real decision, action and controller nodes, and score what they do.

:func:`replay_bag` plays a rosbag2 bag (MCAP or sqlite3, one file or a route of segments, recorded by
``ros2 bag record`` or our logger) into the nodes, all in one process on a MultiThreadedExecutor and on
sim time: ``/clock`` follows the bag. Topics are matched to roles by the experience schema's names
(``reader.TopicMap`` defaults: ``/camera/image_raw``, ``/odom``, ``/navigation``, ...); ``remaps``
rename bag topics first (``{"/image": "/camera/image_raw"}``). The camera, odometry and navigation are
played; logged decisions are only used as labels. What goes in and what the nodes publish is written
to a new bag (``<out>/bag``), then :func:`evaluate_replay` scores it open loop, as AlphaDrive does:
planning accuracy and F1 per speed and path class against the logged decisions (or, without them,
labels from the future ego motion, ``core.labels.label_from_future``), trajectory L2 at 1/2/3 s against
the future ego path, and latency. :func:`write_report` writes report.md, report.json and PNG plots.

Two ways to play:

* ``rate``: messages go out on the wall clock at ``rate`` x bag speed; the nodes run on their own
  timers (decisions at 2 Hz, plans at 10 Hz, commands at 20 Hz of sim time), as on the car.
* ``lockstep``: deterministic. The nodes' sim-time timers are cancelled and the player drives their
  cycles per camera frame, as the timers would on a 2 Hz / 10 Hz grid of bag time started at the first
  frame (a cycle at the first frame at or after each multiple of the period from there): publish the
  frame's inputs, step ``/clock`` to it and wait until every node holds them and reads that time; run
  the decision cycle when due and wait until the action node holds the decision; run the action cycle
  when due; before the next frame's clock step, wait until the trajectory and the controller's command
  (one per trajectory) are recorded. The controller gets a frame's odometry only after commanding the
  previous plan, so a command never depends on message timing. Outputs are recorded at the clock of their frame: two replays of one bag
  give identical outputs (``ReplayResult.digest``; decision latency, a wall-clock figure, left out).

The pieces: :mod:`.replay_input` (the bag), :mod:`.replay_player` and :mod:`.lockstep` (playing it),
:mod:`.replay_scoring` and :mod:`.replay_report` (what the nodes did).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.trajectory import TrajectorySpec
from ..nodes.spin import frozen_heap
from ..runtime.loading import inference_threads, load_policy
from .lockstep import LockstepPlayer
from .replay_input import open_bag_input
from .replay_player import ReplayPlayer
from .replay_report import write_report
from .replay_scoring import REPLAY_TRUTHS, evaluate_replay


@dataclass
class ReplayResult:
    out_dir: Path
    bag: Path  # folder holding the recorded segments (inputs as played + the nodes' outputs)
    report: dict  # what report.json holds
    decisions: list[dict] = field(default_factory=list)  # decision JSON as published
    trajectories: list[tuple[float, np.ndarray, bool]] = field(default_factory=list)  # (stamp, poses, fallback)
    digest: str = ""  # sha256 over every output with its time (decision latency left out)


def replay_bag(bag, out_dir, *, lockstep: bool = False, rate: float = 1.0, remaps: dict[str, str] | None = None,
               checkpoint: str = "", backend: str = "auto", policies: tuple | None = None,
               decision_rate_hz: float = 2.0, domain_id: int | None = None, frame_timeout_s: float = 2.0,
               progress: bool = True, truth: str = "logged") -> ReplayResult:
    """Play ``bag`` through the nodes, record what they publish under ``out_dir/bag``, score and report.

    ``policies`` = (decision policy, action policy) already loaded; a lockstep replay calls both nodes
    from one thread, so one policy may serve both there (a free-running replay needs two objects).
    ``truth`` as in :func:`evaluate_replay`; an unknown one raises before anything is played.
    """
    if truth not in REPLAY_TRUTHS:
        raise ValueError(f"truth must be one of {REPLAY_TRUTHS}, got {truth!r}")
    if not lockstep and not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if policies is None:
        # lockstep calls one shared policy from one thread; free-running, two nodes infer at once
        threads = inference_threads(model_nodes=1 if lockstep else 2)
        first = load_policy(checkpoint, backend, threads=threads)
        policies = (first, first if lockstep else load_policy(checkpoint, backend, threads=threads))
    rig = policies[0].rig
    source = open_bag_input(bag, remaps, rig.names if rig is not None else None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    player = (LockstepPlayer if lockstep else ReplayPlayer)(source, out_dir / "bag", policies, decision_rate_hz,
                                                            domain_id, frame_timeout_s)
    try:
        with frozen_heap():  # no full-heap collector pauses in the middle of frames
            played = player.play_lockstep(progress) if lockstep else player.play_at_rate(rate, progress)
    finally:
        player.close()
    policy = policies[0]
    evaluation = evaluate_replay(out_dir / "bag", source, policy.vocab, getattr(policy, "spec", TrajectorySpec()),
                                 1.0 / decision_rate_hz, player.decisions, truth)
    report = {
        "bag": str(bag), "source": source.source, "mode": "lockstep" if lockstep else f"rate {rate:g}x",
        "model_version": policy.model_version, "backend": policy.backend_name, "topics": source.topics,
        **played, **evaluation["report"],
        "plan_latency_ms": player.plan_latency(),
        "outputs_digest": player.digest(),
        "bag_skipped": dict(source.skipped), "bag_left_out": source.left_out.note(),
    }
    write_report(out_dir, report, evaluation["rows"], policy.vocab)
    return ReplayResult(out_dir, out_dir / "bag", report, player.decisions, player.trajectories, report["outputs_digest"])
