"""Model commands: build a random checkpoint, inspect one."""
from __future__ import annotations

import json

from ..model.build import build_random_checkpoint
from ..model.checkpoint import CheckpointError, verify_checkpoint
from ..runtime.loading import resolve_checkpoint


def register(sub) -> None:
    p = sub.add_parser("init-checkpoint", help="write an untrained tiny checkpoint (for smoke tests)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=init_checkpoint)

    p = sub.add_parser("inspect", help="verify a checkpoint's hashes and print its manifest summary")
    p.add_argument("checkpoint", nargs="?", default="", help="checkpoint dir (default: the embedded one)")
    p.add_argument("--json", action="store_true", help="the whole manifest (every file and training shard hash)")
    p.set_defaults(func=inspect)


def init_checkpoint(args) -> int:
    print(build_random_checkpoint(args.out, seed=args.seed))
    return 0


def inspect(args) -> int:
    path = resolve_checkpoint(args.checkpoint)
    try:
        manifest = verify_checkpoint(path)
    except CheckpointError as err:
        print(f"REFUSED: {err}")
        return 1
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    lineage = dict(manifest.get("lineage") or {})
    data = lineage.pop("data", None)
    if isinstance(data, dict):  # one hash per training shard: count them here, list them with --json
        lineage["data"] = f"{len(data)} files (hashes in the manifest; --json lists them)"
    vocab = manifest["vocabulary"]
    print(f"{path}: model {manifest['model_version']}, hashes verified ({len(manifest['files'])} files)")
    print(f"adapters: {', '.join(manifest['adapters'])}; vocabulary {vocab['name']}: "
          f"{len(vocab['speeds'])} speeds x {len(vocab['paths'])} paths")
    for key, value in (("trajectory", manifest["trajectory"]), ("versions", manifest["versions"]),
                       ("lineage", lineage), ("metrics", manifest.get("metrics"))):
        print(f"{key}: {json.dumps(value)}")
    return 0
