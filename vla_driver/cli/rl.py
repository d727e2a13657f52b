"""RL commands: ``refresh`` (offline, from bags), ``train-rl`` (online, in the simulator), ``gate`` and
``promote``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..bench import json_safe
from ..experience.bag_open import BagError
from ..model.checkpoint import read_manifest
from ..rl.gate import format_comparison, gate, promote
from ..rl.online import train_rl
from ..rl.online_config import TrainRLConfig
from ..rl.parallel import DataParallel
from ..rl.refresh import RefreshConfig, refresh
from .common import (
    DEFAULT_SCENARIOS,
    add_eval_arguments,
    checkpoint_dir,
    heldout_seeds,
    override_from_args,
    policy_threads,
    scenario_list,
)


def register(sub) -> None:
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
                       description="Unset options keep the recipe measured in docs/results.md (rl.online_config.TrainRLConfig, "
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
    add_eval_arguments(p)
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
    p.add_argument("--key", default="", help="sign the promoted checkpoint with this ed25519 private key")
    p.set_defaults(func=promote_command)


def refresh_command(args) -> int:
    cfg = RefreshConfig()
    override_from_args(cfg, args, {n: n for n in ("sft_steps", "grpo_steps", "batch_size", "takeover_penalty", "truth")})
    override_from_args(cfg.grpo, args, {n: n for n in ("group_size", "lr", "beta_kl", "seed")})
    missing = [d for d in args.experience if not Path(d).exists()]
    if missing:
        raise SystemExit(f"experience not found: {missing}")
    parallel = DataParallel.from_environment(cpu=args.cpu)  # one process, or those of `accelerate launch`
    try:
        report = refresh(args.experience, checkpoint_dir(args.from_checkpoint), args.out, cfg, parallel=parallel)
    except BagError as err:  # a damaged or unreadable bag: which and why, in one line
        print(f"refresh: {err}", file=sys.stderr)
        return 2
    if parallel.is_main:
        print(json.dumps({"bench": "refresh", **json_safe(report)}))
    return 0


def train_rl_command(args) -> int:
    cfg = TrainRLConfig(executor=args.executor, ray_address=args.ray_address)
    override_from_args(cfg, args, {"iterations": "iterations", "workers": "workers", "group": "group_size",
                                   "episodes_per_iteration": "episodes_per_iteration", "episode_seconds": "episode_s",
                                   "branch_every": "branch_every", "seed_offset": "seed_offset"})
    override_from_args(cfg.reward, args, {"horizon": "horizon_s", "follow": "follow_s", "headway": "headway_s",
                                          "collision_penalty": "collision_penalty",
                                          "blocked_penalty": "blocked_penalty"})
    override_from_args(cfg.grpo, args, {"lr": "lr"})
    if args.scenarios:
        cfg.scenarios = tuple(scenario_list(args.scenarios))
    cfg.reward.sparse = args.sparse_reward
    try:
        cfg.validate()
        report = train_rl(checkpoint_dir(args.from_checkpoint), args.out, cfg)
    except (ValueError, RuntimeError) as e:
        print(f"train-rl: {e}")
        return 2
    report.pop("iterations_detail")
    print(json.dumps({"bench": "train_rl", **json_safe(report)}))
    return 0


def gate_command(args) -> int:
    try:
        decision = gate(checkpoint_dir(args.current), checkpoint_dir(args.candidate), args.replay,
                        scenario_list(args.scenarios), seeds=heldout_seeds(args), tolerance=args.tolerance,
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
        Path(args.report).write_text(json.dumps(json_safe(decision.to_dict()), indent=2))
    return 0 if decision.promote else 1


def promote_command(args) -> int:
    candidate = checkpoint_dir(args.candidate)
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
    record = promote(candidate, args.registry, report, args.precision, sign_key=args.key)
    engine = record["engine"]
    print(f"promoted {record['model_version']} (previous {record['previous']}) -> {record['path']}; "
          f"engines: {'built' if engine['built'] else engine.get('skipped') or engine.get('error')}"
          + (f"; signed by key {record['signed_by']}" if record.get("signed_by") else ""))
    return 0
