"""The cost curve: one prompt and camera input on Qwen2 stand-ins from ~4 M to 0.5 B parameters, per backend.

Each size is a checkpoint on a random-weight stand-in (``model.standin``) with the front camera's input,
built once under ``work`` and reused; the ~4 M point is the embedded default. Every (size, backend) runs in
its own spawned process, so each peak RSS is its own. Backends: torch, ONNX Runtime, and ONNX Runtime on
graphs whose MatMuls are dynamically quantized to int8 (their decisions compared with fp32 ORT's on
simulator frames). The compute limit of a pass is its FLOPs at the matmul bound (``pass_flops``: 2 x
parameters x prompt tokens, a ViT's parameters x its patches) at the fp32 matmul rate measured here.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import onnx
import torch

from ..core.camera_rig import load_rig
from ..model.build import build_random_checkpoint
from ..model.checkpoint import read_manifest, sha256_file
from ..model.config import VLAConfig
from ..model.standin import make_llm_standin, make_vision_standin
from ..runtime.export import SHARED_WEIGHTS, SharedWeights
from ..runtime.graph_spec import TOKEN_EMBEDDINGS, load_graph_specs, save_graph_specs
from ..runtime.loading import ensure_exported, graph_policy, load_policy, resolve_checkpoint
from ..runtime.onnx_backend import OrtSessions
from ..sim.parity_frames import simulator_observations
from . import child_result, emit, peak_rss_mb, percentiles, time_calls
from .backends import frame_for_bench

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
INT8_DIR = "onnx-int8"


@dataclass(frozen=True)
class Variant:
    """One point of the curve: the LLM stand-in (empty: the embedded default), the vision tower stand-in
    (empty: the small CNN) and the rig."""

    label: str
    llm: str = ""
    vision: str = ""
    rig: str = "front"


VARIANTS = {v.label: v for v in (
    Variant("4m"), Variant("30m", "30m"), Variant("120m", "120m"), Variant("0.5b", "0.5b"),
    Variant("0.5b+vit-b", "0.5b", "vit-b"), Variant("0.5b+vit-b-x3", "0.5b", "vit-b", "front3"),
    Variant("tiny", "tiny"), Variant("tiny+vit-x3", "tiny", "tiny", "front3"),  # the tests' sizes
)}
DEFAULT_VARIANTS = ("4m", "30m", "120m", "0.5b", "0.5b+vit-b", "0.5b+vit-b-x3")


def checkpoint_for(variant: Variant, work: Path) -> Path:
    """The variant's checkpoint, built (stand-ins included) on first use; the base referenced by hash."""
    if not variant.llm:
        return resolve_checkpoint("")
    llm = work / "standins" / variant.llm
    if not (llm / "config.json").is_file():
        shutil.rmtree(llm, ignore_errors=True)
        make_llm_standin(llm, variant.llm)
    cfg = VLAConfig.for_rig(load_rig(variant.rig), llm_pretrained_dir=str(llm))
    if variant.vision:
        vision = work / "standins" / f"vision-{variant.vision}"
        if not (vision / "config.json").is_file():
            shutil.rmtree(vision, ignore_errors=True)
            make_vision_standin(vision, variant.vision)
        cfg.vision.pretrained_dir = str(vision)
    ckpt = work / "checkpoints" / variant.label
    if not (ckpt / "manifest.json").is_file():
        build_random_checkpoint(ckpt, cfg=cfg, self_contained=False)
    return ckpt


def quantize_graphs(ckpt: Path) -> Path:
    """``<ckpt>/onnx-int8``: every exported graph with its MatMul weights dynamically quantized to int8
    (activations quantized at run time), with its own graphs.json and hashes; reused while current."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = ckpt / "onnx", ckpt / INT8_DIR
    specs = load_graph_specs(src / "graphs.json")
    stamp = sha256_file(src / "graphs.json")
    if (out / "source.sha256").is_file() and (out / "source.sha256").read_text() == stamp:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with SharedWeights(out / SHARED_WEIGHTS) as store:  # the quantized graphs share weights as fp32's do
        for spec in specs:
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                staged = Path(tmp) / spec.onnx_file
                quantize_dynamic(src / spec.onnx_file, staged, op_types_to_quantize=["MatMul"],
                                 weight_type=QuantType.QInt8, use_external_data_format=True)
                graph = onnx.load(str(staged))
            store.externalize(graph)
            onnx.save_model(graph, str(out / spec.onnx_file))
            spec.onnx_sha256 = sha256_file(out / spec.onnx_file)
        data = store.close()
    for spec in specs:
        spec.data_file, spec.data_sha256 = data["data_file"], data["data_sha256"]
    shutil.copy(src / TOKEN_EMBEDDINGS, out / TOKEN_EMBEDDINGS)
    save_graph_specs(specs, out / "graphs.json")
    (out / "source.sha256").write_text(stamp)
    return out


def _policy(backend: str, ckpt: Path, threads: int):
    if backend != "onnxruntime-int8":
        return load_policy(ckpt, backend, threads=threads)
    graphs = ckpt / INT8_DIR
    specs = {s.name: s for s in load_graph_specs(graphs / "graphs.json")}
    runners = OrtSessions(specs, graphs, threads)
    return graph_policy(runners, specs, graphs, read_manifest(ckpt), backend, ckpt)


def _measure(backend: str, ckpt: str, iters: int, threads: int, frames: int, queue) -> None:
    torch.set_num_threads(threads)
    try:
        policy = _policy(backend, Path(ckpt), threads)
        obs = frame_for_bench(policy)
        decision = policy.decide(obs).decision
        enc = policy.encoder
        rows = enc.decision_rows([obs])[0]
        new_tokens = len(enc.ids(f"{policy.vocab.speeds[0]}, {policy.vocab.paths[0]}</answer>"))
        result = {
            "backend": policy.backend_name, "prompt_tokens": len(rows),
            "decision": percentiles(time_calls(lambda: policy.decision_table([obs]), iters, warmup=1)),
            "plan": percentiles(time_calls(lambda: policy.trajectory_modes([obs], [decision]), iters, warmup=1)),
            "cycle": percentiles(time_calls(lambda: policy.plan(obs, policy.decide(obs).decision), iters, warmup=1)),
        }
        result["peak_rss_mb"] = peak_rss_mb()  # what a driving node holds: decide and plan, no thinking graphs
        result["generate"] = percentiles(time_calls(lambda: policy.generate_ids(obs, rows, new_tokens, set()), iters,
                                                    warmup=1))
        result["peak_rss_thinking_mb"] = peak_rss_mb()  # + the decoding graphs (ORT opens them on first use)
        if backend == "torch":
            result["params"] = sum(p.numel() for p in policy.model.parameters())
            result["pass_flops"] = pass_flops(policy.model, len(rows))
        if backend == "onnxruntime-int8" and frames:
            reference = _policy("onnxruntime", Path(ckpt), threads)
            observed = simulator_observations(frames, ("highway", "merge"), policy.rig, policy.history)
            same = [reference.decide(o).decision == policy.decide(o).decision for o in observed]
            result["agreement"] = float(np.mean(same))
            result["agreement_frames"] = len(same)
    except Exception as err:  # noqa: BLE001 - reported by the parent as one line
        result = {"error": f"{backend}: {type(err).__name__}: {err}"}
    queue.put(result)


def pass_flops(model, prompt_tokens: int) -> float:
    """FLOPs of one decision pass at the matmul bound: 2 x parameters x tokens for the LLM (and the small
    CNN, counted as if it were the LLM's), plus 2 x parameters x patches x views for a ViT tower, which
    reads every patch of every camera."""
    vision = getattr(model.vision, "tower", None)
    if vision is None:
        return 2.0 * sum(p.numel() for p in model.parameters()) * prompt_tokens
    tower = sum(p.numel() for p in vision.parameters())
    patches = (vision.config.image_size // vision.config.patch_size) ** 2
    rest = sum(p.numel() for p in model.parameters()) - tower
    return 2.0 * rest * prompt_tokens + 2.0 * tower * patches * model.cfg.views


def matmul_gflops(n: int = 2048, threads: int = 2) -> float:
    """This CPU's fp32 matmul rate with ``threads`` threads: the compute limit's denominator."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = percentiles(time_calls(lambda: a @ b, 10))["p50"]
    return 2 * n**3 / (ms / 1e3) / 1e9


def run(variants=DEFAULT_VARIANTS, backends=BACKENDS, work: str = "runs/bench/scale", iters: int = 10,
        threads: int = 2, frames: int = 200, plot: str = "") -> list[dict]:
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    gflops = matmul_gflops(threads=threads)
    print(f"fp32 matmul 2048^3 with {threads} threads: {gflops:.0f} GFLOP/s")
    ctx, records = mp.get_context("spawn"), []
    for label in variants:
        variant = VARIANTS[label]
        ckpt = checkpoint_for(variant, work_dir)
        export_s = None  # the export this run did; None where current graphs were reused
        if any(b != "torch" for b in backends):
            spec_file = ckpt / "onnx" / "graphs.json"
            before = spec_file.stat().st_mtime_ns if spec_file.is_file() else None
            start = time.perf_counter()
            ensure_exported(ckpt, sha256_file(ckpt / "manifest.json"))
            if spec_file.stat().st_mtime_ns != before:
                export_s = time.perf_counter() - start
            if "onnxruntime-int8" in backends:
                quantize_graphs(ckpt)
        params = flops = None
        for backend in backends:
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(backend, str(ckpt), iters, threads,
                                                      frames if backend == "onnxruntime-int8" else 0, queue))
            proc.start()
            r = child_result(proc, queue)
            if "error" in r:
                print(f"{label} {r['error']}")
                continue
            params, flops = r.get("params", params), r.get("pass_flops", flops)
            record = {"bench": "scale", "variant": label, "params_m": params / 1e6 if params else None,
                      "backend": backend, "decision_ms_p50": r["decision"]["p50"],
                      "decision_ms_p99": r["decision"]["p99"], "generate_ms_p50": r["generate"]["p50"],
                      "plan_ms_p50": r["plan"]["p50"], "cycle_ms_p50": r["cycle"]["p50"],
                      "peak_rss_mb": r["peak_rss_mb"], "peak_rss_thinking_mb": r["peak_rss_thinking_mb"],
                      "prompt_tokens": r["prompt_tokens"],
                      "export_s": export_s if backend != "torch" else None}
            if flops:
                limit = flops / (gflops * 1e9) * 1e3
                record["compute_limit_ms"] = limit
                record["decision_vs_limit"] = r["decision"]["p50"] / limit
            if "agreement" in r:
                record["int8_agreement"], record["agreement_frames"] = r["agreement"], r["agreement_frames"]
            records.append(record)
            emit(record)
    _table(records)
    (work_dir / "scale.json").write_text(json.dumps(records, indent=1))
    _plot(records, plot or str(work_dir / "scale.png"))
    return records


def _table(records: list[dict]) -> None:
    print(f"{'variant':<15}{'params M':>9}{'backend':>18}{'decide p50':>11}{'p99':>8}{'generate':>10}{'plan':>8}"
          f"{'cycle':>8}{'limit':>8}{'RSS MB':>8}{'int8 agree':>11}")
    for r in records:
        agree = f"{r['int8_agreement']:.3f}" if "int8_agreement" in r else "-"
        print(f"{r['variant']:<15}{r['params_m'] or 0:>9.1f}{r['backend']:>18}{r['decision_ms_p50']:>11.1f}"
              f"{r['decision_ms_p99']:>8.1f}{r['generate_ms_p50']:>10.1f}{r['plan_ms_p50']:>8.1f}"
              f"{r['cycle_ms_p50']:>8.1f}{r.get('compute_limit_ms') or 0:>8.1f}{r['peak_rss_mb']:>8.0f}{agree:>11}")


def _plot(records: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = [r for r in records if r["params_m"] and "+" not in r["variant"]]
    for backend in BACKENDS:
        points = sorted((r["params_m"], r["decision_ms_p50"]) for r in curve if r["backend"] == backend)
        if points:
            ax.plot(*zip(*points, strict=True), "o-", label=f"decision, {backend}")
    limit = sorted({(r["params_m"], r["compute_limit_ms"]) for r in curve if "compute_limit_ms" in r})
    if limit:
        ax.plot(*zip(*limit, strict=True), "k--", label="compute limit (2 x params x tokens, fp32 matmul rate)")
    for r in records:
        if "+" in r["variant"] and r["params_m"]:
            ax.plot(r["params_m"], r["decision_ms_p50"], "x", label=f"{r['variant']}, {r['backend']}")
    ax.set(xscale="log", yscale="log", xlabel="parameters (M)", ylabel="decision single pass p50 (ms)",
           title="vla-driver bench scale: batch 1, 2 threads, CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")
