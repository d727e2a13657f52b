"""The GPU check: the car-size model on one CUDA device, measured in one run of a few minutes.

Runs where only PyTorch, transformers, peft and safetensors are installed (no ROS, simulator, ONNX Runtime
or TensorRT): ``bash bench/gpu_check.sh`` from the source tree. It builds the Qwen2.5-0.5B stand-in and a
SigLIP-base tower (random weights, ``model.standin``) in bf16 and prints one JSON line per figure:

* ``single_pass_vs_generate``: the decision table in one pass vs greedy ``generate`` of the same answer's
  tokens after the same prompt (the foundation issue's target: ratio >= 5);
* ``latency``: decision and action p50/p99 for 1 and 3 cameras, eager and compiled (``torch.compile``,
  CUDA graphs through ``mode="reduce-overhead"`` on a GPU);
* ``batch``: 8 decisions in one pass (throughput for offline evaluation);
* ``memory``: peak GPU memory (peak RSS on a CPU).

``--device cpu --size tiny`` runs the same code in seconds: the tests run it so the one GPU run it may get
does not fail on a typo.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..core.camera_rig import load_rig
from ..core.types import Observation
from ..model.build import build_model
from ..model.config import VLAConfig
from ..model.standin import make_llm_standin, make_vision_standin
from ..runtime.policy import TorchPolicy
from . import emit, peak_rss_mb, percentiles, time_calls

NOT_NEEDED = ("rclpy", "highway_env", "onnxruntime", "tensorrt", "panda3d", "gymnasium", "rosbags", "mcap")
VISION_FOR = {"tiny": "tiny"}  # every other LLM size gets the SigLIP-base tower


def _observation(policy: TorchPolicy, seed: int = 0) -> Observation:
    rig = policy.rig
    views = np.random.default_rng(seed).integers(0, 255, (policy.encoder.views, rig.model_height, rig.model_width, 3),
                                                 dtype=np.uint8)
    return Observation(views, 9.0, "Turn left in 50m")


def _model(llm_dir: Path, vision_dir: Path, rig: str, device: torch.device, dtype: torch.dtype):
    """The stand-in VLA on ``device``: the LLM and the vision tower in ``dtype``, the small heads in fp32."""
    cfg = VLAConfig.for_rig(load_rig(rig), llm_pretrained_dir=str(llm_dir))
    cfg.vision.pretrained_dir = str(vision_dir)
    model = build_model(cfg).eval().to(device)
    model.llm.to(dtype)
    model.vision.to(dtype)
    return model


def _compiled(policy: TorchPolicy, backend: str, on_gpu: bool) -> TorchPolicy:
    """The same policy with its two forward passes compiled (CUDA graphs on a GPU with inductor)."""
    model = policy.model
    options = {"mode": "reduce-overhead"} if on_gpu and backend == "inductor" else {"backend": backend}
    model.decision_log_probs = torch.compile(model.decision_log_probs, dynamic=False, **options)
    model.trajectories = torch.compile(model.trajectories, dynamic=False, **options)
    return policy


def _measure_rig(policy: TorchPolicy, cameras: int, iters: int, sync, compile_backend: str, on_gpu: bool):
    """The records of one rig: (1 camera only) single pass vs generate and a batch of 8, then latency eager
    and compiled."""
    obs = _observation(policy)
    rows = policy.encoder.decision_rows([obs])[0]
    decision = policy.decide(obs).decision
    if cameras == 1:
        words = f"{policy.vocab.speeds[0]}, {policy.vocab.paths[0]}</answer>"
        new_tokens = len(policy.encoder.ids(words))
        single = percentiles(time_calls(lambda: policy.decision_table([obs]), iters, sync=sync))
        generate = percentiles(time_calls(lambda: policy.generate_ids(obs, rows, new_tokens, set()), iters,
                                          sync=sync))
        yield {"check": "single_pass_vs_generate", "cameras": 1, "prompt_tokens": len(rows),
               "answer_tokens": new_tokens, "single_pass_ms_p50": single["p50"],
               "generate_ms_p50": generate["p50"], "ratio": generate["p50"] / single["p50"]}
        batch = [_observation(policy, seed) for seed in range(8)]
        ms = percentiles(time_calls(lambda: policy.decision_table(batch), iters, sync=sync))["p50"]
        yield {"check": "batch", "cameras": 1, "batch": 8, "ms_p50": ms, "decisions_per_s": 8e3 / ms}
    variants = [("eager", lambda: policy)]  # eager first: compiling replaces the model's two passes in place
    if compile_backend != "none":
        variants.append((f"compiled ({compile_backend})", lambda: _compiled(policy, compile_backend, on_gpu)))
    for name, make in variants:
        p = make()
        first = time.perf_counter()
        p.decide(obs)
        p.plan(obs, decision)  # a compiled policy compiles here (timed apart)
        first_s = time.perf_counter() - first
        d = percentiles(time_calls(lambda p=p: p.decision_table([obs]), iters, sync=sync))
        a = percentiles(time_calls(lambda p=p: p.trajectory_modes([obs], [decision]), iters, sync=sync))
        yield {"check": "latency", "cameras": cameras, "mode": name, "prompt_tokens": len(rows),
               "decision_ms_p50": d["p50"], "decision_ms_p99": d["p99"], "action_ms_p50": a["p50"],
               "action_ms_p99": a["p99"], "first_call_s": first_s}


def run(device: str = "cuda", size: str = "0.5b", iters: int = 30, dtype: str = "bfloat16",
        compile_backend: str = "inductor", budget_s: float = 330.0) -> list[dict]:
    start = time.perf_counter()
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else None
    torch_dtype = getattr(torch, dtype)
    records = []

    def report(record):
        records.append(record)
        emit({"bench": "gpu", **record})

    with tempfile.TemporaryDirectory(prefix="vla-gpu-check-") as tmp:
        llm_dir = make_llm_standin(Path(tmp) / "llm", size)
        vision_dir = make_vision_standin(Path(tmp) / "vision", VISION_FOR.get(size, "vit-b"))
        report({"check": "build", "size": size, "device": str(dev), "dtype": dtype,
              "gpu": torch.cuda.get_device_name(dev) if on_gpu else None, "torch": torch.__version__,
              "seconds": time.perf_counter() - start})
        compile_s = 0.0  # what compiling the first rig took: the second is compiled only if that fits the budget
        for cameras, rig in ((1, "front"), (3, "front3")):
            model = _model(llm_dir, vision_dir, rig, dev, torch_dtype)
            compile_now = compile_backend != "none" and time.perf_counter() - start + 1.3 * compile_s < budget_s
            if compile_backend != "none" and not compile_now:
                print(f"skipping torch.compile for {cameras} camera(s): it took {compile_s:.0f} s for one camera "
                      f"and the run must end within {budget_s:.0f} s")
            for record in _measure_rig(TorchPolicy(model), cameras, iters, sync,
                                       compile_backend if compile_now else "none", on_gpu):
                report(record)
                if record.get("mode", "eager") != "eager":
                    compile_s = max(compile_s, record["first_call_s"])
            del model
            if on_gpu:
                torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if on_gpu else peak_rss_mb()
    report({"check": "memory", "peak_gpu_mb" if on_gpu else "peak_rss_mb": peak,
          "seconds": time.perf_counter() - start,
          "imported_but_not_needed": sorted(m for m in NOT_NEEDED if m in sys.modules)})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--size", default="0.5b", choices=["tiny", "30m", "120m", "0.5b"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (inductor; eager checks the tracing only; none skips it)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu check: --device {args.device} but torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    run(args.device, args.size, args.iters, args.dtype, args.compile_backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
