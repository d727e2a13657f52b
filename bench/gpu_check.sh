#!/usr/bin/env bash
# The prepared GPU check: the Qwen2.5-0.5B-size stand-in (+ SigLIP-base tower) in bf16 on one CUDA device,
# one JSON line per figure, a few minutes in all. Needs only PyTorch, transformers, peft and safetensors
# (no ROS, no simulator, no ONNX Runtime, no TensorRT, no project venv); run it from the source tree:
#   bash bench/gpu_check.sh                         # cuda, 0.5b, bf16
#   bash bench/gpu_check.sh --device cpu --size tiny --compile-backend eager   # the CPU dry run the tests do
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${PYTHON:-python3}" -m vla_driver.bench.gpu "$@"
