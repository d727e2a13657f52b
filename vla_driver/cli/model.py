"""Model commands: build a random checkpoint, inspect one, sign one."""
from __future__ import annotations

import json
from pathlib import Path

from ..model.build import build_random_checkpoint
from ..model.checkpoint import CheckpointError, read_manifest, verify_checkpoint
from ..model.config import VLAConfig
from ..model.signing import generate_key, load_trusted_keys, verify_signature
from ..model.standin import LLM_SIZES, VISION_SIZES, make_llm_standin, make_vision_standin, parameter_count
from ..runtime.loading import resolve_checkpoint
from ..runtime.trust import sign_with_artifacts
from .common import add_rig_argument, rig_from_args


def register(sub) -> None:
    p = sub.add_parser("init-checkpoint", help="write an untrained checkpoint: tiny, or on a local pretrained LLM")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-dir", default="", metavar="DIR",
                   help="a local Hugging Face Qwen2/Qwen2.5 directory (e.g. Qwen2.5-0.5B) as the base LLM")
    p.add_argument("--vision-dir", default="", metavar="DIR",
                   help="a local Hugging Face vision tower (e.g. SigLIP) instead of the small CNN")
    add_rig_argument(p)
    base = p.add_mutually_exclusive_group()
    base.add_argument("--self-contained", dest="self_contained", action="store_true", default=None,
                      help="copy the --llm-dir weights into the checkpoint")
    base.add_argument("--reference-base", dest="self_contained", action="store_false",
                      help="reference the --llm-dir weights by hash (default when that directory is read-only)")
    p.set_defaults(func=init_checkpoint)

    p = sub.add_parser("standin", help="write a random-weight stand-in of a pretrained model (Qwen2.5-0.5B, SigLIP)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="0.5b", choices=sorted(LLM_SIZES), help="the Qwen2 shape")
    p.add_argument("--vision", default="", choices=["", *sorted(VISION_SIZES)],
                   help="also write a SigLIP vision tower of this shape to OUT/vision")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=standin)

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
    for flag, path in (("--llm-dir", args.llm_dir), ("--vision-dir", args.vision_dir)):
        if path and not (Path(path) / "config.json").is_file():
            print(f"error: {flag} {path}: no config.json there; not a Hugging Face model directory")
            return 1
    rig = rig_from_args(args)
    cfg = VLAConfig.for_rig(rig, args.history) if rig else VLAConfig()
    cfg.llm_pretrained_dir = args.llm_dir
    cfg.vision.pretrained_dir = args.vision_dir
    out = build_random_checkpoint(args.out, seed=args.seed, cfg=cfg, self_contained=args.self_contained)
    base = read_manifest(out).get("base")
    print(f"{out}" + (f" (base referenced by hash: {base['path']})" if base else ""))
    return 0


def standin(args) -> int:
    out = Path(args.out)
    llm = make_llm_standin(out / "llm", args.size, args.seed)
    print(f"{llm}: Qwen2 {args.size}, {parameter_count(llm) / 1e6:.1f} M parameters, random weights")
    if args.vision:
        vision = make_vision_standin(out / "vision", args.vision, args.seed)
        print(f"{vision}: SigLIP {args.vision}, {parameter_count(vision) / 1e6:.1f} M parameters, random weights")
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
        kid, artifacts = sign_with_artifacts(args.checkpoint, args.key)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}")
        return 1
    print(f"signed {args.checkpoint} with key {kid}"
          + (f", and {', '.join(str(p.relative_to(args.checkpoint)) for p in artifacts)}" if artifacts else ""))
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
    if "base" in manifest:
        print(f"base: {manifest['base']['path']} (referenced, {len(manifest['base']['files'])} files verified)")
    for key, value in (("trajectory", manifest["trajectory"]), ("versions", manifest["versions"]),
                       ("lineage", lineage), ("metrics", manifest.get("metrics"))):
        print(f"{key}: {json.dumps(value)}")
    return 0
