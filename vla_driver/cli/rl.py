"""RL commands: ``refresh`` (offline, from bags), ``train-rl`` (online, in the simulator), ``gate``, ``promote``
``bench rl-gain`` (SFT vs SFT+RL, closed loop) and ``bench open-loop`` (AlphaDrive's table on a replay set)."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from .sim import _scenarios, add_threads_argument, add_workers_argument, override_from_args, policy_threads

DEFAULT_SCENARIOS = "highway,merge,roundabout,intersection"


def register(sub, bench_sub) -> None:
    p = sub.add_parser("refresh", help="offline RL refresh of the decision adapter from logged experience bags")
    p.add_argument("--experience", nargs="+", required=True, metavar="DIR", help="bag dirs / segment folders")
    p.add_argument("--from", dest="from_checkpoint", required=True, metavar="CHECKPOINT")
    p.add_argument("--out", required=True, help="new checkpoint directory")
    p.add_argument("--sft-steps", type=int, default=None, help="decision warm-up steps on derived labels")
    p.add_argument("--grpo-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--beta-kl", type=float, default=None)
    p.add_argument("--takeover-penalty", type=float, default=None)
    p.add_argument("--truth", choices=("future", "logged"), default=None,
                   help="truth per sample: the decision matching the logged future motion (default; vehicle "
                        "logs), or the logged decision (bags driven by the simulator's expert or annotated)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    p.set_defaults(func=refresh_command)

    p = sub.add_parser("train-rl", help="online GRPO in the simulator: closed-loop rollouts with branching",
                       description="Unset options keep the recipe measured in README (rl.online.TrainRLConfig, "
                                   "measured_branch_reward); the manifest records every value used.")
    p.add_argument("--from", dest="from_checkpoint", required=True, metavar="CKPT")
    p.add_argument("--out", required=True, help="new checkpoint directory (curves in OUT.rl.png)")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="rollout processes / actors (0 = in this process)")
    p.add_argument("--group", type=int, default=None, help="decisions drawn per branch point (G)")
    p.add_argument("--executor", choices=("process", "ray"), default="process")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--episodes-per-iteration", type=int, default=None)
    p.add_argument("--episode-seconds", type=float, default=None, help="length of a training episode")
    p.add_argument("--scenarios", default=None, help=f"comma-separated (default {DEFAULT_SCENARIOS})")
    p.add_argument("--branch-every", type=int, default=None, help="decision points between branch points")
    p.add_argument("--horizon", type=float, default=None, help="seconds each branch holds its decision")
    p.add_argument("--follow", type=float, default=None,
                   help="seconds each branch then drives on with the policy's greedy decisions (scored too)")
    p.add_argument("--sparse-reward", action="store_true",
                   help="MindDrive's -1/0/+1 instead of the dense reward (no headway or blocked term)")
    p.add_argument("--headway", type=float, default=None,
                   help="penalise branches whose time headway to the car ahead drops below this many seconds")
    p.add_argument("--collision-penalty", type=float, default=None,
                   help="what a branch that crashes pays (a crash ends a Driving Score episode at x0.6)")
    p.add_argument("--blocked-penalty", type=float, default=None,
                   help="what a branch that ends the episode blocked pays besides the progress it forgoes "
                        "(Driving Score charges being blocked x0.7)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed-offset", type=int, default=None, help="first training seed")
    p.set_defaults(func=train_rl_command)

    p = sub.add_parser("gate", help="should CANDIDATE replace CURRENT? closed-loop DS (+ replay accuracy)")
    p.add_argument("current")
    p.add_argument("candidate")
    _add_eval_arguments(p)
    p.add_argument("--replay", nargs="+", default=(), metavar="BAG",
                   help="replay set (bags, segment folders, folders of drives) the current model did not drive: "
                        "also require no planning-accuracy regression on it")
    p.add_argument("--truth", choices=("logged", "future"), default="logged",
                   help="replay labels: the bags' logged decisions where they have them (expert / annotated "
                        "drives; default), or always the decision matching the logged motion")
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed DS drop (default 0.02)")
    p.add_argument("--accuracy-tolerance", type=float, default=0.02, help="allowed replay accuracy drop")
    p.add_argument("--report", default="", help="write the decision JSON here (for promote --gate-report)")
    p.set_defaults(func=gate_command)

    p = sub.add_parser("promote", help="install a checkpoint as the registry's current model (+ engines)")
    p.add_argument("candidate")
    p.add_argument("--registry", required=True, metavar="DIR")
    p.add_argument("--gate-report", default="", help="gate decision JSON from `vla-driver gate --report`")
    p.add_argument("--force", action="store_true", help="promote even though the gate report refused it")
    p.add_argument("--precision", default="fp16", help="TensorRT engine precision (when TensorRT is here)")
    p.set_defaults(func=promote_command)

    b = bench_sub.add_parser("rl-gain", help="SFT vs SFT+RL checkpoints: closed-loop DS and SR with 95%% CI")
    b.add_argument("--sft", required=True, metavar="CKPT")
    b.add_argument("--rl", required=True, metavar="CKPT")
    b.add_argument("--json-out", default="", help="also write the comparison, every episode pair included, here")
    _add_eval_arguments(b)
    b.set_defaults(func=rl_gain_command)

    b = bench_sub.add_parser("open-loop", help="AlphaDrive's open-loop table (planning accuracy, F1 per class) "
                                               "of checkpoints on the same held-out replay set")
    b.add_argument("checkpoints", nargs="+", metavar="CKPT", help="e.g. the SFT and the SFT+GRPO checkpoint")
    b.add_argument("--bags", nargs="+", default=[], help="replay set (default: record the expert on held-out seeds)")
    b.add_argument("--episodes", type=int, default=2, help="expert drives per scenario to record")
    b.add_argument("--seed-offset", type=int, default=0, help="start this far into the held-out seeds")
    b.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    b.add_argument("--seconds", type=float, default=20.0, help="length of each recorded drive")
    b.add_argument("--out", default="", help="keep the recorded bags here (default: a temporary folder)")
    b.add_argument("--backend", default="torch")
    b.set_defaults(func=open_loop_command)


def _add_eval_arguments(p) -> None:
    p.add_argument("--episodes", type=int, default=5, help="held-out episodes per scenario")
    p.add_argument("--seed-offset", type=int, default=0, help="start this far into the held-out seeds")
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    p.add_argument("--duration", type=float, default=None, help="episode length in s (default: the scenario's)")
    p.add_argument("--backend", default="torch")
    add_threads_argument(p)
    add_workers_argument(p)


def _heldout_seeds(args) -> list[int]:
    from ..sim.closed_loop import HELDOUT_SEEDS

    if args.episodes < 1 or args.seed_offset < 0:
        raise SystemExit("--episodes must be at least 1 and --seed-offset at least 0")
    return list(HELDOUT_SEEDS[args.seed_offset:args.seed_offset + args.episodes])


def _checkpoint(path: str) -> str:
    if not (Path(path) / "manifest.json").is_file():
        raise SystemExit(f"{path} is not a checkpoint directory (no manifest.json)")
    return path


def _clean(value):
    """JSON-safe: nan/inf -> None, floats rounded."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def refresh_command(args) -> int:
    from ..rl.parallel import DataParallel
    from ..rl.refresh import RefreshConfig, refresh

    cfg = RefreshConfig()
    override_from_args(cfg, args, {n: n for n in ("sft_steps", "grpo_steps", "batch_size", "takeover_penalty", "truth")})
    override_from_args(cfg.grpo, args, {n: n for n in ("group_size", "lr", "beta_kl", "seed")})
    missing = [d for d in args.experience if not Path(d).exists()]
    if missing:
        raise SystemExit(f"experience not found: {missing}")
    parallel = DataParallel.from_environment(cpu=args.cpu)  # one process, or those of `accelerate launch`
    report = refresh(args.experience, _checkpoint(args.from_checkpoint), args.out, cfg, parallel=parallel)
    if parallel.is_main:
        print(json.dumps({"bench": "refresh", **_clean(report)}))
    return 0


def train_rl_command(args) -> int:
    from ..rl.online import TrainRLConfig, train_rl

    cfg = TrainRLConfig(executor=args.executor, ray_address=args.ray_address)
    override_from_args(cfg, args, {"iterations": "iterations", "workers": "workers", "group": "group_size",
                                   "episodes_per_iteration": "episodes_per_iteration", "episode_seconds": "episode_s",
                                   "branch_every": "branch_every", "seed_offset": "seed_offset"})
    override_from_args(cfg.reward, args, {"horizon": "horizon_s", "follow": "follow_s", "headway": "headway_s",
                                          "collision_penalty": "collision_penalty",
                                          "blocked_penalty": "blocked_penalty"})
    override_from_args(cfg.grpo, args, {"lr": "lr"})
    if args.scenarios:
        cfg.scenarios = tuple(_scenarios(args.scenarios))
    cfg.reward.sparse = args.sparse_reward
    try:
        cfg.validate()
        report = train_rl(_checkpoint(args.from_checkpoint), args.out, cfg)
    except (ValueError, RuntimeError) as e:
        print(f"train-rl: {e}")
        return 2
    report.pop("iterations_detail")
    print(json.dumps({"bench": "train_rl", **_clean(report)}))
    return 0


def gate_command(args) -> int:
    from ..rl.gate import format_comparison, gate

    try:
        decision = gate(_checkpoint(args.current), _checkpoint(args.candidate), args.replay,
                        _scenarios(args.scenarios), seeds=_heldout_seeds(args), tolerance=args.tolerance,
                        accuracy_tolerance=args.accuracy_tolerance, backend=args.backend, duration_s=args.duration,
                        workers=args.workers, threads=policy_threads(args), replay_truth=args.truth)
    except (FileNotFoundError, LookupError, ValueError) as e:  # a replay set that cannot be replayed: before driving
        print(f"gate: {e}")
        return 2
    print(format_comparison(decision.metrics["closed_loop"], ("current", "candidate")))
    for reason in decision.reasons:
        print(f"- {reason}")
    print("PROMOTE" if decision.promote else "REFUSE")
    if args.report:
        Path(args.report).write_text(json.dumps(_clean(decision.to_dict()), indent=2))
    return 0 if decision.promote else 1


def promote_command(args) -> int:
    from ..model.checkpoint import read_manifest
    from ..rl.gate import promote

    candidate = _checkpoint(args.candidate)
    report = None
    if args.gate_report:
        report = json.loads(Path(args.gate_report).read_text())
        gated = report.get("metrics", {}).get("closed_loop", {}).get("candidate")
        version = read_manifest(candidate)["model_version"]
        if gated != version:
            raise SystemExit(f"gate report is about model {gated}, not {version}")
        if not report.get("promote") and not args.force:
            print("the gate refused this candidate: " + "; ".join(report.get("reasons", [])) + " (--force overrides)")
            return 1
    record = promote(candidate, args.registry, report, args.precision)
    engine = record["engine"]
    print(f"promoted {record['model_version']} (previous {record['previous']}) -> {record['path']}; "
          f"engines: {'built' if engine['built'] else engine.get('skipped') or engine.get('error')}")
    return 0


def rl_gain_command(args) -> int:
    from ..bench import emit
    from ..rl.gate import compare_policies, format_comparison

    comparison = compare_policies(_checkpoint(args.sft), _checkpoint(args.rl), _scenarios(args.scenarios),
                                  seeds=_heldout_seeds(args), backend=args.backend, duration_s=args.duration,
                                  workers=args.workers, threads=policy_threads(args))
    print(format_comparison(comparison, ("SFT", "SFT+RL")))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(_clean(comparison), indent=1))
    o = comparison["overall"]
    emit({"bench": "rl_gain", "sft_driving_score": o["baseline"]["driving_score"],
          "rl_driving_score": o["candidate"]["driving_score"], "sft_success_rate": o["baseline"]["success_rate"],
          "rl_success_rate": o["candidate"]["success_rate"], "ds_diff": o["ds_diff"],
          "ds_diff_ci95": None if math.isnan(o["ds_diff_ci95"]) else o["ds_diff_ci95"],
          "episodes": o["baseline"]["episodes"]})
    return 0


def open_loop_command(args) -> int:
    from ..bench import emit
    from ..experience.reader import find_bags
    from ..rl.gate import format_open_loop, open_loop_metrics
    from .replay import record_sim

    names = [Path(c).resolve().name for c in args.checkpoints]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    checkpoints = dict(zip(names, (_checkpoint(c) for c in args.checkpoints), strict=True))
    try:  # folders expand to their bags, so "bags" below counts bags, not arguments
        bags = find_bags(args.bags)
    except FileNotFoundError as e:
        print(f"open-loop: {e}")
        return 2
    if not bags:
        seeds = _heldout_seeds(args)
        out = Path(args.out or tempfile.mkdtemp(prefix="open_loop_"))
        for scenario in _scenarios(args.scenarios):
            for seed in seeds:
                bags.append(record_sim(out / f"{scenario}_{seed}", scenario, args.seconds, "expert", seed))
    table = open_loop_metrics(checkpoints, bags, args.backend, progress=True)
    print(format_open_loop(table))
    emit({"bench": "open_loop", "bags": len(bags), "samples": next(iter(table.values()))["n"],
          "policies": _clean({n: {k: v for k, v in m.items() if k != "n"} for n, m in table.items()})})
    return 0
