"""Options and checks that several commands share, so that each is written and documented once."""
from __future__ import annotations

from pathlib import Path

from ..core.camera_rig import CameraRig, load_rig
from ..runtime.loading import inference_threads
from ..sim.closed_loop import HELDOUT_SEEDS
from ..sim.scenarios import SCENARIOS

DEFAULT_SCENARIOS = "highway,merge,roundabout,intersection"


def add_rig_argument(parser) -> None:
    parser.add_argument("--rig", default="front",
                        help="cameras to record: a preset of config/rigs (front, front3, surround6), a rig YAML, or "
                             "'topdown' for the map view the models before perspective cameras were trained on")
    parser.add_argument("--history", type=int, default=1,
                        help="frames per camera the model sees, one per 0.5 s, oldest first (default 1)")


def rig_from_args(args) -> CameraRig | None:
    """``--rig`` as a rig (None for 'topdown'), or exit with one clear line."""
    if args.rig == "topdown":
        return None
    try:
        return load_rig(args.rig)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--rig {args.rig}: {err}") from None


def add_threads_argument(parser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads per policy (default: the cores shared out among the --workers; "
                             "more threads than cores make OpenMP teams wait on each other)")


def add_workers_argument(parser) -> None:
    parser.add_argument("--workers", type=int, default=0,
                        help="episodes in this many processes, each with its own policy (0 = in this process); "
                             "the results do not depend on it")


def add_eval_arguments(parser) -> None:
    """Held-out closed-loop episodes: how many, where in the seeds, which scenarios, how long, on what."""
    parser.add_argument("--episodes", type=int, default=5, help="held-out episodes per scenario")
    parser.add_argument("--seed-offset", type=int, default=0, help="start this far into the held-out seeds")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    parser.add_argument("--duration", type=float, default=None, help="episode length in s (default: the scenario's)")
    parser.add_argument("--backend", default="torch")
    add_threads_argument(parser)
    add_workers_argument(parser)


def policy_threads(args) -> int:
    """``--threads``, or the cores shared out among the worker processes: 2 workers with 2 threads each on 2
    cores ran closed-loop episodes ~18x slower (55 s instead of ~3 s each)."""
    return args.threads if args.threads is not None else inference_threads(max(1, getattr(args, "workers", 0)))


def override_from_args(config, args, fields: dict[str, str]) -> None:
    """Set ``config.<field>`` from ``args.<arg>`` for each given (not None) option; the rest keep the
    dataclass defaults."""
    for arg, name in fields.items():
        if getattr(args, arg) is not None:
            setattr(config, name, getattr(args, arg))


def scenario_list(text: str) -> list[str]:
    """``"highway,merge"`` -> the scenario names, or exit with the known ones."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        raise SystemExit(f"unknown or no scenarios {unknown or text!r}; choose from {sorted(SCENARIOS)}")
    return names


def heldout_seeds(args) -> list[int]:
    """The ``--episodes`` held-out seeds from ``--seed-offset`` on."""
    if args.episodes < 1 or args.seed_offset < 0:
        raise SystemExit("--episodes must be at least 1 and --seed-offset at least 0")
    return list(HELDOUT_SEEDS[args.seed_offset:args.seed_offset + args.episodes])


def checkpoint_dir(path: str) -> str:
    """``path`` if it holds a checkpoint, else exit with one clear line."""
    if not (Path(path) / "manifest.json").is_file():
        raise SystemExit(f"{path} is not a checkpoint directory (no manifest.json)")
    return path
