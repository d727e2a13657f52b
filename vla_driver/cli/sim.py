"""Simulator commands: closed-loop evaluation against the expert, and expert data recording."""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

from ..bench import rl_gain
from ..core.metrics import EpisodeResult, format_table, summarize
from ..runtime.loading import load_policy
from ..sim.camera_render import APPEARANCES
from ..sim.closed_loop import TRAIN_SEEDS, evaluate, run_episode
from ..sim.dataset import record_expert_dataset
from ..sim.expert import ExpertPolicy
from ..sim.render import save_episode_gif
from .common import (
    DEFAULT_SCENARIOS,
    add_rig_argument,
    add_threads_argument,
    add_workers_argument,
    checkpoint_dir,
    heldout_seeds,
    policy_threads,
    rig_from_args,
    scenario_list,
)


def register(sub) -> None:
    add_eval_command(sub.add_parser("eval", help="closed-loop driving score of a policy vs the expert"))

    p = sub.add_parser("record-expert", help="record expert driving into an SFT dataset (npz shards)")
    p.add_argument("--out", required=True)
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    p.add_argument("--episodes", type=int, default=10, help="episodes per scenario (training seeds)")
    p.add_argument("--seed-offset", type=int, default=0)
    p.add_argument("--perturb", type=float, default=0.05, help="DAgger-lite perturbation probability per decision")
    p.add_argument("--frame-hz", type=float, default=2.0)
    p.add_argument("--driver", default="", metavar="CKPT",
                   help="DAgger: this policy drives and the expert labels the states it visits")
    p.add_argument("--expert-share", type=float, default=0.3, help="DAgger: share of decision periods the expert drives")
    add_rig_argument(p)
    p.add_argument("--same-appearance", action="store_true",
                   help="render every episode in the default colours (default: a random appearance per episode)")
    _add_runtime_arguments(p, default_backend="auto")
    p.set_defaults(func=record_command)


def _add_runtime_arguments(parser, default_backend: str) -> None:
    parser.add_argument("--backend", default=default_backend, choices=("auto", "torch", "onnxruntime"),
                        help="inference backend of the checkpoint policy")
    add_threads_argument(parser)


def add_eval_command(parser) -> None:
    """``eval``'s options (also ``bench closed_loop``)."""
    parser.add_argument("--policy", default="default",
                        help="'default' (the embedded checkpoint), a checkpoint directory, or 'expert'")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    parser.add_argument("--episodes", type=int, default=5, help="episodes per scenario (held-out seeds)")
    parser.add_argument("--seed-offset", type=int, default=0, help="start this far into the held-out seeds")
    parser.add_argument("--gif", default="", help="write the first episode as an annotated GIF here")
    parser.add_argument("--json-out", default="",
                        help="also write every episode result (with --compare: the comparison, every episode "
                             "pair included) to this JSON file")
    parser.add_argument("--expert-json", default="",
                        help="reuse the expert's results on the same seeds (an earlier `eval --policy expert "
                             "--json-out`) instead of driving the expert again")
    parser.add_argument("--appearance", choices=APPEARANCES, default="default",
                        help="how a rig's cameras see the world: the default look, a training-like random one per "
                             "seed, or held_out: settings training never draws (default: default)")
    parser.add_argument("--compare", nargs=2, metavar=("SFT_CKPT", "RL_CKPT"),
                        help="SFT vs SFT+RL on the same held-out seeds (DS, SR, 95%% CI, paired difference)")
    _add_runtime_arguments(parser, default_backend="torch")
    add_workers_argument(parser)
    parser.set_defaults(func=evaluate_command)


def _policy_factory(spec: str, backend: str = "torch", threads: int = 2):
    """A picklable policy constructor (worker processes build their own policy with it)."""
    if spec == "expert":
        return ExpertPolicy
    if spec != "default" and not Path(spec).is_dir():
        raise SystemExit(f"--policy must be 'default', 'expert' or a checkpoint directory; {spec!r} is none of them")
    return partial(load_policy, "" if spec == "default" else spec, backend, threads=threads)


def _number(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def evaluate_command(args) -> int:
    if args.compare:
        if args.gif or args.expert_json or args.policy != "default":
            raise SystemExit("--policy, --gif and --expert-json go without --compare, which drives only its two "
                             "checkpoints")
        sft, rl = (checkpoint_dir(c) for c in args.compare)
        rl_gain.run(sft, rl, scenario_list(args.scenarios), heldout_seeds(args), args.backend, None, args.workers,
                    policy_threads(args), args.json_out)
        return 0

    scenarios, seeds = scenario_list(args.scenarios), heldout_seeds(args)
    factory = _policy_factory(args.policy, args.backend, policy_threads(args))
    results = evaluate(factory, scenarios, seeds, workers=args.workers, appearance=args.appearance)
    summary = summarize(results)
    print(f"policy: {args.policy}  seeds: {seeds[0]}..{seeds[-1]}  appearance: {args.appearance}  "
          "(95% CI: Student t over episodes)")
    print(format_table(summary))
    if args.policy == "expert":
        expert_summary = summary
    else:
        expert_summary = summarize(_expert_results(args.expert_json, scenarios, seeds, args.workers))
        print("expert on the same seeds:")
        print(format_table(expert_summary))
    if args.gif:
        _, frames = run_episode(factory(), scenarios[0], seeds[0], record_frames=True)
        print(f"gif: {save_episode_gif(frames, args.gif, every=2)}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=1)
    overall = summary["overall"]
    print(json.dumps({"bench": "closed_loop", "policy": args.policy, "appearance": args.appearance,
                      "driving_score": _number(overall["driving_score"]),
                      "success_rate": _number(overall["success_rate"]),
                      "expert_driving_score": _number(expert_summary["overall"]["driving_score"])}))
    return 0


def _expert_results(path: str, scenarios: list[str], seeds: list[int], workers: int = 0) -> list:
    """The expert on exactly these (scenario, seed) episodes: from ``path`` when given, else driven now."""
    if not path:
        return evaluate(ExpertPolicy, scenarios, seeds, workers=workers)
    with open(path) as f:
        saved = {(r["scenario"], r["seed"]): EpisodeResult.from_dict(r) for r in json.load(f)}
    missing = [(s, k) for s in scenarios for k in seeds if (s, k) not in saved]
    if missing:
        raise SystemExit(f"--expert-json {path} lacks {len(missing)} of the episodes, e.g. {missing[:3]}")
    return [saved[(s, k)] for s in scenarios for k in seeds]


def record_command(args) -> int:
    scenarios = scenario_list(args.scenarios)
    seeds = list(TRAIN_SEEDS[args.seed_offset:args.seed_offset + args.episodes])
    driver = None
    if args.driver:
        driver = load_policy(args.driver, backend=args.backend, threads=policy_threads(args))
    rig = driver.rig if driver is not None else rig_from_args(args)
    meta = record_expert_dataset(args.out, scenarios, seeds, frame_hz=args.frame_hz, perturb_prob=args.perturb,
                                 driver=driver, expert_share=args.expert_share, rig=rig,
                                 randomize_appearance=not args.same_appearance, history=args.history)
    print(json.dumps({"dataset": args.out, "samples": meta["samples"], "shards": len(meta["shards"])}))
    return 0
