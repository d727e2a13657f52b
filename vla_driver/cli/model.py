"""Model commands: build a random checkpoint, inspect one, sign one."""
from __future__ import annotations

import json

from ..model.build import build_random_checkpoint
from ..model.checkpoint import CheckpointError, verify_checkpoint
from ..model.signing import generate_key, load_trusted_keys, sign_checkpoint, verify_signature
from ..runtime.loading import resolve_checkpoint


def register(sub) -> None:
    p = sub.add_parser("init-checkpoint", help="write an untrained tiny checkpoint (for smoke tests)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=init_checkpoint)

    p = sub.add_parser("inspect", help="verify a checkpoint's hashes (and signature) and print its manifest summary")
    p.add_argument("checkpoint", nargs="?", default="", help="checkpoint dir (default: the embedded one)")
    p.add_argument("--json", action="store_true", help="the whole manifest (every file and training shard hash)")
    p.add_argument("--trusted-keys", default="", metavar="KEYS",
                   help="also require a signature by one of these public keys (files or directories of *.pub)")
    p.set_defaults(func=inspect)

    p = sub.add_parser("keygen", help="make an ed25519 key pair for signing checkpoints")
    p.add_argument("key", help="private key file to create (0600); the public key goes to KEY.pub")
    p.set_defaults(func=keygen)

    p = sub.add_parser("sign", help="sign a checkpoint's manifest with an ed25519 key")
    p.add_argument("checkpoint")
    p.add_argument("--key", required=True, help="private key file (`vla-driver keygen`)")
    p.set_defaults(func=sign)


def init_checkpoint(args) -> int:
    print(build_random_checkpoint(args.out, seed=args.seed))
    return 0


def keygen(args) -> int:
    try:
        private, public = generate_key(args.key)
    except FileExistsError as err:
        print(f"error: {err}")
        return 1
    print(f"private key {private} (keep it off the car); public key {public} (give it to the nodes' trusted_keys)")
    return 0


def sign(args) -> int:
    try:
        kid = sign_checkpoint(args.checkpoint, args.key)
    except (CheckpointError, OSError) as err:
        print(f"error: {err}")
        return 1
    print(f"signed {args.checkpoint} with key {kid}")
    return 0


def inspect(args) -> int:
    path = resolve_checkpoint(args.checkpoint)
    try:
        signer = verify_signature(path, load_trusted_keys(args.trusted_keys)) if args.trusted_keys else None
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
    print(f"{path}: model {manifest['model_version']}, hashes verified ({len(manifest['files'])} files)"
          + (f", signed by trusted key {signer}" if signer else ""))
    print(f"adapters: {', '.join(manifest['adapters'])}; vocabulary {vocab['name']}: "
          f"{len(vocab['speeds'])} speeds x {len(vocab['paths'])} paths")
    for key, value in (("trajectory", manifest["trajectory"]), ("versions", manifest["versions"]),
                       ("lineage", lineage), ("metrics", manifest.get("metrics"))):
        print(f"{key}: {json.dumps(value)}")
    return 0
