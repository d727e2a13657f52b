"""Training and export commands: imitation from the simulator expert, ONNX export."""
from __future__ import annotations

import json
from pathlib import Path

from ..rl.parallel import DataParallel
from ..rl.sft import SFTConfig
from ..rl.sft import train_sft as run
from ..runtime.export import export_checkpoint
from ..runtime.loading import resolve_checkpoint
from ..sim.closed_loop import TRAIN_SEEDS
from ..sim.dataset import record_expert_dataset
from ..sim.scenarios import SCENARIOS
from .common import add_rig_argument, override_from_args, rig_from_args


def register(sub) -> None:
    p = sub.add_parser("train-sft", help="record expert driving in the simulator and train the policy by imitation")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--data", nargs="+", default=["runs/sft_data"],
                   help="dataset dir(s) (record-expert format); expert driving is recorded into the first one "
                        "if it is empty")
    p.add_argument("--scenarios", default="highway,merge,roundabout,intersection")
    p.add_argument("--episodes", type=int, default=24, help="expert episodes per scenario when recording")
    add_rig_argument(p)
    p.add_argument("--from-checkpoint", default="", help="start from this checkpoint instead of a fresh model")
    p.add_argument("--action-steps", type=int, default=None)
    p.add_argument("--decision-steps", type=int, default=None)
    p.add_argument("--decision-weight", type=float, default=None,
                   help="weight of the decision loss in phase 1 (default 1; 0: trajectories only, then the action "
                        "adapter is copied into the decision adapter as in MindDrive)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    p.add_argument("--train-base", action="store_true",
                   help="phase 1 also trains a from-scratch base LLM (ignored for fine-tunes and pretrained LLMs)")
    p.add_argument("--widen-history", action="store_true",
                   help="fine-tune a checkpoint on data with more frames per camera: the model's views grow to them")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory for a large base LLM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    p.set_defaults(func=train_sft)

    p = sub.add_parser("export", help="export a checkpoint's graphs to ONNX (per adapter, merged)")
    p.add_argument("--checkpoint", default="", help="checkpoint dir (default: the embedded one)")
    p.add_argument("--out", default="", help="output dir (default: CHECKPOINT/onnx, or onnx-float16)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-seq", type=int, default=256)
    p.add_argument("--weights", choices=("float32", "float16"), default="float32",
                   help="float16: weights stored in half precision, read through casts (the input for TensorRT "
                        "FP16 builds; ONNX Runtime still computes in float32, so `verify` runs it here)")
    p.set_defaults(func=export)


def train_sft(args) -> int:
    cfg = SFTConfig(seed=args.seed, train_base=args.train_base, widen_history=args.widen_history,
                    gradient_checkpointing=args.gradient_checkpointing)
    override_from_args(cfg, args, {n: n for n in ("action_steps", "decision_steps", "decision_weight", "batch_size",
                                                  "threads")})
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {sorted(SCENARIOS)}")
    parallel = DataParallel.from_environment(cpu=args.cpu)  # one process, or those of `accelerate launch`
    data = Path(args.data[0])
    if parallel.is_main and not any(data.glob("*.npz")):
        record_expert_dataset(data, scenarios, list(TRAIN_SEEDS[: args.episodes]), rig=rig_from_args(args),
                              history=args.history)
    parallel.wait()  # the other processes read the data the main one recorded
    report = run(args.data, args.out, args.from_checkpoint or None, cfg, parallel=parallel)
    if parallel.is_main:
        print(json.dumps({"bench": "sft", **report}))
    return 0


def export(args) -> int:
    ckpt = resolve_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else ckpt / ("onnx" if args.weights == "float32" else f"onnx-{args.weights}")
    for spec in export_checkpoint(ckpt, out, args.max_batch, args.max_seq, args.weights):
        print(f"{spec.name:<16} {out / spec.onnx_file}  sha256 {spec.onnx_sha256[:16]}..  adapter {spec.adapter}")
    return 0
