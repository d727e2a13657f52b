"""Whether TensorRT can run here, and the engine key it would need: the one place that imports the optional
``tensorrt`` bindings (inside functions, so the runtime imports and is tested on machines without them).

Device buffers are torch CUDA tensors: torch owns the CUDA context on the car, so no second CUDA binding
(cuda-python, pycuda) is needed. Anything that needs TensorRT raises ``TensorRTUnavailable`` with the reason.
"""
from __future__ import annotations

import subprocess

import torch

from .engine_cache import EngineKey
from .graph_spec import GraphSpec


class TensorRTUnavailable(RuntimeError):
    """TensorRT, a CUDA GPU or torch with CUDA is missing here."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise TensorRTUnavailable(
            f"TensorRT Python bindings are not importable ({exc}). On the car they come with JetPack (Jetson) "
            "or `pip install tensorrt` with NVIDIA's package index (x86 + CUDA); elsewhere use the "
            "onnxruntime backend.") from exc
    return trt


def cuda_torch():
    """torch, once it is known to see a CUDA GPU (device buffers are torch CUDA tensors)."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"torch {torch.__version__} sees no CUDA GPU (CPU-only build or no device)")
    return torch


def gpu_compute_capability(device: int = 0) -> str | None:
    """"8.7" (Orin), "8.9" (Ada), "9.0" (Hopper)...; None when no CUDA GPU is visible."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"{major}.{minor}"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader", f"--id={device}"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text.splitlines()[0].strip() if out.returncode == 0 and text else None


def tensorrt_available() -> tuple[bool, str]:
    """(True, "TensorRT 10.3.0 on sm_8.7") or (False, why not): bindings, GPU and torch CUDA all needed."""
    try:
        trt = import_tensorrt()
        cuda_torch()
    except TensorRTUnavailable as exc:
        return False, str(exc)
    cc = gpu_compute_capability()
    if cc is None:
        return False, f"TensorRT {trt.__version__} imported but no CUDA GPU is visible"
    return True, f"TensorRT {trt.__version__} on sm_{cc}"


def runtime_engine_key(spec: GraphSpec, precision: str, checkpoint_sha256: str | None = None,
                       adapter: str | None = None) -> EngineKey:
    """The key an engine for ``spec`` must have to run here (this GPU, this TensorRT)."""
    trt = import_tensorrt()
    cc = gpu_compute_capability()
    if cc is None:
        raise TensorRTUnavailable("no CUDA GPU visible: engines are specific to the GPU they run on")
    return EngineKey.for_graph(spec, precision, cc, trt.__version__, checkpoint_sha256, adapter)
