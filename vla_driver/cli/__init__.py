"""The ``vla-driver`` command: one module of this package per group of subcommands.

Only the module of the command being run is imported (torch, rclpy and highway-env take seconds to load),
so ``vla-driver --help`` lists the commands from :data:`COMMANDS` without importing any of them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module of this package that registers it, one-line help for the command list)
COMMANDS = {
    "demo": ("demo", "drive the embedded simulator through the ROS 2 nodes; table + GIF"),
    "eval": ("sim", "closed-loop driving score of a policy vs the expert"),
    "record-expert": ("sim", "record expert driving into an SFT dataset (npz shards)"),
    "train-sft": ("train", "record expert driving in the simulator and train the policy by imitation"),
    "export": ("train", "export a checkpoint's graphs to ONNX (per adapter, merged)"),
    "init-checkpoint": ("model", "write an untrained checkpoint: tiny, or on a local pretrained LLM"),
    "standin": ("model", "write a random-weight stand-in of a pretrained model (Qwen2.5-0.5B, SigLIP)"),
    "inspect": ("model", "verify a checkpoint's hashes (and signature) and print its manifest summary"),
    "keygen": ("model", "make an ed25519 key pair for signing checkpoints"),
    "sign": ("model", "sign a checkpoint's manifest with an ed25519 key"),
    "replay": ("replay", "play a rosbag2 bag through the nodes; record their outputs and an open-loop report"),
    "record-sim": ("replay", "drive the embedded simulator and write a sample experience bag"),
    "logs": ("logs", "experience segments (rosbag2 MCAP): info, repair, keep"),
    "refresh": ("rl", "offline RL refresh of the decision adapter from logged experience bags"),
    "train-rl": ("rl", "online GRPO in the simulator: closed-loop rollouts with branching"),
    "gate": ("rl", "should CANDIDATE replace CURRENT? closed-loop DS (+ replay accuracy)"),
    "promote": ("rl", "install a checkpoint as the registry's current model (+ engines)"),
    "build-engine": ("deploy", "build TensorRT engines from exported ONNX graphs (on the car)"),
    "verify": ("deploy", "check exported graphs and engines (hashes, operators, cache, numerics)"),
    "keystore": ("keystore", "SROS2 keystore: CA, governance, one enclave per node with its topics"),
    "bench": ("bench", "benchmarks that print figures and one JSON line"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``command`` one whose other subcommands are listed but not loaded."""
    parser = argparse.ArgumentParser(prog="vla-driver", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = sorted({module for module, _ in COMMANDS.values()})
    load = modules if command is None else [COMMANDS[command][0]] if command in COMMANDS else []
    for module in load:
        importlib.import_module(f"{__name__}.{module}").register(sub)
    for name, (module, text) in COMMANDS.items():
        if module not in load:
            sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")  # "" (e.g. --help): load no module
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
