"""bench/gpu_check.sh, the script prepared for one run on a CUDA machine, runs end to end here with the small
stand-in (--device cpu --size tiny), through the same shell entry point, importing nothing it must not need."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_with_the_tiny_standin():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--size", "tiny",
                           "--iters", "2", "--compile-backend", "eager"], capture_output=True, text=True, env=env,
                          timeout=600, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"bench": "gpu"')]
    checks = [(r["check"], r.get("cameras"), r.get("mode")) for r in lines]
    assert checks == [("build", None, None), ("single_pass_vs_generate", 1, None), ("batch", 1, None),
                      ("latency", 1, "eager"), ("latency", 1, "compiled (eager)"),
                      ("latency", 3, "eager"), ("latency", 3, "compiled (eager)"), ("memory", None, None)]
    ratio = next(r for r in lines if r["check"] == "single_pass_vs_generate")
    assert ratio["generate_ms_p50"] > 0 and ratio["ratio"] > 0 and ratio["answer_tokens"] >= 3
    three = [r for r in lines if r["check"] == "latency" and r["cameras"] == 3]
    assert all(r["prompt_tokens"] > lines[3]["prompt_tokens"] for r in three)  # more cameras, more tokens
    assert lines[-1]["imported_but_not_needed"] == [] and lines[-1]["peak_rss_mb"] > 0


def test_the_gpu_check_says_in_one_line_when_there_is_no_cuda_device():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--size", "tiny"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr
