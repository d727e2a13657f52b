"""Model commands: build a random checkpoint, inspect one, benchmark decision scoring."""
from __future__ import annotations

import json


def register(sub, bench_sub) -> None:
    p = sub.add_parser("init-checkpoint", help="write an untrained tiny checkpoint (for smoke tests)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=init_checkpoint)

    p = sub.add_parser("inspect", help="verify a checkpoint's hashes and print its manifest summary")
    p.add_argument("checkpoint", nargs="?", default="", help="checkpoint dir (default: the embedded one)")
    p.set_defaults(func=inspect)

    b = bench_sub.add_parser("decision", help="single-pass candidate scoring vs autoregressive generate")
    b.add_argument("--checkpoint", default="")
    b.add_argument("--iters", type=int, default=50)
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=bench_decision)

    b = bench_sub.add_parser("backends", help="torch eager vs ONNX Runtime latency and memory at batch 1")
    b.add_argument("--checkpoint", default="")
    b.add_argument("--iters", type=int, default=100)
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=bench_backends)


def init_checkpoint(args) -> int:
    from ..model.build import build_random_checkpoint

    print(build_random_checkpoint(args.out, seed=args.seed))
    return 0


def inspect(args) -> int:
    from ..model.checkpoint import CheckpointError, verify_checkpoint
    from ..runtime.policy import resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    try:
        manifest = verify_checkpoint(path)
    except CheckpointError as err:
        print(f"REFUSED: {err}")
        return 1
    summary = {k: manifest[k] for k in ("model_version", "versions", "vocabulary", "trajectory", "adapters",
                                        "lineage", "metrics")}
    summary["files"] = len(manifest["files"])
    print(json.dumps(summary, indent=2))
    return 0


def bench_decision(args) -> int:
    from ..bench.decision import run

    run(args.checkpoint, args.iters, args.threads)
    return 0


def bench_backends(args) -> int:
    from ..bench.backends import run

    run(args.checkpoint, args.iters, args.threads)
    return 0
