"""``vla-driver build-engine`` and ``vla-driver verify``; the trt/*.py scripts run the same code.

Each command's arguments come from one ``add_*_arguments`` function and its work from one ``run_*`` handler,
used both here and by ``trt/build_engine.py``, ``trt/verify_engine.py`` and ``trt/export_onnx.py``. Only TensorRT
is imported lazily (an optional dependency); each handler returns an exit code: 0 ok, 1 a check failed, 2 cannot run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from vla_driver.model.checkpoint import checkpoint_rig, read_manifest
from vla_driver.runtime.calibration import calibration_batches, iter_frames, passthrough_preprocess
from vla_driver.runtime.engine_cache import (
    PRECISIONS,
    EngineKey,
    HashMismatchError,
    check_engine_dir,
    engine_filename,
    verify_file_hash,
)
from vla_driver.runtime.export import export_checkpoint
from vla_driver.runtime.graph_spec import PROFILE_POINTS, load_graph_specs, sample_feeds
from vla_driver.runtime.loading import resolve_checkpoint
from vla_driver.runtime.onnx_backend import OrtSession
from vla_driver.runtime.onnx_ops import unsupported_ops
from vla_driver.runtime.parity import verify_onnx_against_torch
from vla_driver.runtime.tensorrt_builder import EntropyCalibrator, build_engine
from vla_driver.runtime.tensorrt_env import runtime_engine_key, tensorrt_available
from vla_driver.runtime.tensorrt_runner import TrtRunner, compare_runners
from vla_driver.sim.parity_frames import observations_for


def _add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=Path, required=True,
                   help="graphs.json written by export (one GraphSpec, a list, or {'graphs': [...]})")
    p.add_argument("--graph", action="append", metavar="NAME", help="only this graph (repeatable)")
    p.add_argument("--onnx", type=Path, help="ONNX file overriding the spec's (only with a single graph)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="engine precision (default fp16)")
    p.add_argument("--allow-recent-ops", action="store_true",
                   help="accept opset-23/24 operators that only the newest TensorRT 10 parses")


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="engine directory")
    p.add_argument("--calib-frames", type=Path, metavar="DIR", help="int8: .npz/.png frames to calibrate on")
    p.add_argument("--calib-batches", type=int, default=64, help="int8: at most this many batches (default 64)")
    p.add_argument("--calib-preprocess", metavar="MODULE:FACTORY",
                   help="int8: FACTORY(spec) returns preprocess(frame) -> inputs; default: .npz keyed by input name")
    p.add_argument("--timing-cache", type=Path, metavar="FILE", help="TensorRT timing cache to load and update")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit (default 4)")
    p.add_argument("--checkpoint-sha256", help="source hash for the engine key (default: from the spec)")
    p.add_argument("--adapter", help="adapter name for the engine key (default: from the spec)")
    p.add_argument("--force", action="store_true", help="rebuild even when a valid engine exists")
    p.add_argument("--build-only", action="store_true", help="skip comparing the engine with ONNX Runtime")
    p.add_argument("--no-progress", action="store_true", help="no progress bars during the build")


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    p.add_argument("--engines", type=Path, metavar="DIR", help="check (and on a GPU, run) the engines in DIR")
    p.add_argument("--trt-version", help="check engines for this TensorRT version instead of the installed one")
    p.add_argument("--compute-capability", help="check engines for this GPU (e.g. 8.7) instead of the local one")
    p.add_argument("--checkpoint", type=Path, metavar="DIR", help="also compare ONNX with the torch model")
    p.add_argument("--frames", type=Path, metavar="DIR", help="dataset dir (record-expert) for the torch comparison")
    p.add_argument("--sim-frames", type=int, default=0, metavar="N",
                   help="compare on N simulator frames instead (the expert drives held-out episodes)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, metavar="DIR", help="checkpoint directory")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the ONNX files and graphs.json go")
    p.add_argument("--weights", choices=("float32", "float16"), default="float32",
                   help="float16: the weights stored in half precision (half the bytes to ship for an FP16 build)")


# ---- shared steps -------------------------------------------------------------------------------------
def _selected_graphs(args) -> list[tuple]:
    """(GraphSpec, onnx path) for each selected graph. Raises ValueError/FileNotFoundError with the reason."""
    specs = load_graph_specs(args.spec)
    if args.graph:
        unknown = sorted(set(args.graph) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"{args.spec} has no graph {unknown}; it has {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in args.graph]
    if args.onnx is not None and len(specs) != 1:
        raise ValueError(f"--onnx needs exactly one graph; select it with --graph ({len(specs)} selected)")
    return [(s, args.onnx if args.onnx is not None else s.onnx_path(args.spec.parent)) for s in specs]


def _graphs_or_report(args) -> list[tuple] | None:
    """``_selected_graphs``, or None once the reason they cannot be read is printed (the handler exits 2)."""
    try:
        return _selected_graphs(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _static_problems(spec, onnx_path: Path, allow_recent: bool) -> list[str]:
    """What can be checked without running anything: spec consistency, ONNX file hash, operator support."""

    problems = list(spec.problems())
    if not onnx_path.is_file():
        return [*problems, f"ONNX file not found: {onnx_path}"]
    for path, digest in ((onnx_path, spec.onnx_sha256), (spec.data_beside(onnx_path), spec.data_sha256)):
        if digest:
            try:
                verify_file_hash(path, digest)
            except (HashMismatchError, FileNotFoundError) as exc:
                return [*problems, str(exc)]
    try:
        unsupported = unsupported_ops(onnx_path, allow_recent=allow_recent)
    except (DecodeError, ValueError) as exc:
        return [*problems, f"{onnx_path} is not a readable ONNX model ({exc})"]
    if unsupported:
        problems.append(f"operators TensorRT's ONNX parser does not take: {', '.join(unsupported)}")
    return problems


def _calibrator(args, spec, engine_path: Path):
    """int8 only: an entropy calibrator over --calib-frames, or over nothing when a calibration cache made for
    this very engine key exists (TensorRT then reads the cache). None: no calibration data at all."""
    if args.precision != "int8":
        return None

    cache = engine_path.with_name(engine_path.stem + ".int8-calibration.cache")
    if args.calib_frames is None:
        return EntropyCalibrator([], cache) if cache.is_file() else None
    if args.calib_preprocess:
        module_name, _, factory_name = args.calib_preprocess.partition(":")
        try:
            preprocess = getattr(importlib.import_module(module_name), factory_name)(spec)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"--calib-preprocess {args.calib_preprocess}: {exc}") from exc
    else:
        preprocess = passthrough_preprocess(spec)
    batches = calibration_batches(iter_frames(args.calib_frames), preprocess, spec, max_batches=args.calib_batches)
    return EntropyCalibrator(batches, cache)


def _report(summary: dict) -> None:
    print(json.dumps(summary, sort_keys=True, default=str))


def _failed_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r["ok"]]


# ---- handlers -----------------------------------------------------------------------------------------
def run_build_engine(args) -> int:
    graphs = _graphs_or_report(args)
    if graphs is None:
        return 2
    problems = {spec.name: _static_problems(spec, onnx, args.allow_recent_ops) for spec, onnx in graphs}
    for name, found in problems.items():
        for problem in found:
            print(f"{name}: {problem}", file=sys.stderr)
    if any(problems.values()):
        return 1

    ok, why = tensorrt_available()
    if not ok:
        print(f"error: cannot build TensorRT engines here: {why}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"precision": args.precision, "engines": {}}
    failed = False
    for spec, onnx in graphs:
        key = runtime_engine_key(spec, args.precision, args.checkpoint_sha256, args.adapter)
        decision = check_engine_dir(args.out, key, allow_rebuild=True)
        entry: dict = {"cache": decision.summary()}
        try:
            if decision.usable and not args.force:
                engine = decision.engine_path
                print(f"{spec.name}: up to date: {engine}")
            else:
                print(f"{spec.name}: building ({'forced' if decision.usable else '; '.join(decision.reasons)})")
                calibrator = _calibrator(args, spec, args.out / engine_filename(key))
                engine = build_engine(onnx, args.out, spec, args.precision, calibrator=calibrator,
                                      timing_cache_path=args.timing_cache, workspace_gb=args.workspace_gb,
                                      progress=not args.no_progress, checkpoint_sha256=args.checkpoint_sha256,
                                      adapter=args.adapter)
                print(f"{spec.name}: wrote {engine}")
            entry["engine"] = str(engine)
            if not args.build_only:
                entry["comparison"] = rows = _compare_with_ort(spec, onnx, engine, args.precision)
                failed |= bool(_failed_rows(rows))
        except (RuntimeError, OSError, ValueError, KeyError) as exc:  # build, load, compare: report, go on
            print(f"{spec.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            entry["error"] = str(exc)
            failed = True
        summary["engines"][spec.name] = entry
    _report(summary)
    return 1 if failed else 0


def _cpu_session(spec, onnx: Path, threads: int) -> OrtSession:
    """``onnx`` (the graph of ``spec``, wherever it was given) on ORT's CPU provider, its files verified."""
    return OrtSession(onnx, spec.onnx_sha256 or None, threads=threads, providers="cpu",
                      data_file=spec.data_beside(onnx), data_sha256=spec.data_sha256 or None)


def _compare_with_ort(spec, onnx: Path, engine: Path, precision: str, threads: int = 2) -> list[dict]:
    reference = _cpu_session(spec, onnx, threads)
    rows = compare_runners(reference, TrtRunner(engine, spec), spec, precision)
    for row in rows:
        figure = row.get("max_abs_diff", row.get("agreement", row.get("error")))
        print(f"{spec.name}: engine vs onnxruntime {row['point']:>3} {row['output']}: {figure} "
              f"{'ok' if row['ok'] else 'FAIL'}")
    return rows


def _check_ort(spec, onnx: Path, threads: int) -> dict:
    """Load the graph in ONNX Runtime (CPU) and run it at min/opt/max: shapes and finiteness."""

    session = _cpu_session(spec, onnx, threads)
    problems = []
    for point in PROFILE_POINTS:
        outputs = session.run(sample_feeds(spec, point))
        for name, value in outputs.items():
            if name in spec.outputs and value.ndim != len(spec.outputs[name].shape):
                problems.append(f"{point}: output {name!r} rank {value.ndim} != spec {len(spec.outputs[name].shape)}")
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                problems.append(f"{point}: output {name!r} has non-finite values")
    return {"ok": not problems, "problems": problems, "providers": session.providers}


def _check_engine(args, spec, onnx: Path) -> dict:
    trt_ok, why = tensorrt_available()
    if args.trt_version and args.compute_capability:
        key = EngineKey.for_graph(spec, args.precision, args.compute_capability, args.trt_version)
    elif trt_ok:
        key = runtime_engine_key(spec, args.precision)
    else:
        return {"ok": None, "skipped": f"TensorRT unavailable ({why}); pass --trt-version and "
                                       "--compute-capability to check engines built for another machine"}
    decision = check_engine_dir(args.engines, key)
    print(f"{spec.name}: engine cache: {decision.summary()}")
    result: dict = {"ok": decision.usable, "decision": decision.action.value, "reasons": list(decision.reasons)}
    if decision.usable and trt_ok:
        try:
            rows = _compare_with_ort(spec, onnx, decision.engine_path, args.precision, args.threads)
        except (RuntimeError, KeyError, ValueError) as exc:  # e.g. EngineLoadError: TensorRT refused the engine
            return {**result, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result.update(ok=not _failed_rows(rows), comparison=rows)
    return result


def run_verify(args) -> int:
    graphs = _graphs_or_report(args)
    if graphs is None:
        return 2
    summary: dict = {"graphs": {}}
    failed = False
    for spec, onnx in graphs:
        problems = _static_problems(spec, onnx, args.allow_recent_ops)
        result: dict = {"static": {"ok": not problems, "problems": problems}}
        for problem in problems:
            print(f"{spec.name}: {problem}", file=sys.stderr)
        if onnx.is_file() and not any("sha256" in p for p in problems):
            try:
                result["onnxruntime"] = _check_ort(spec, onnx, args.threads)
            except (RuntimeError, KeyError, ValueError) as exc:
                result["onnxruntime"] = {"ok": False, "problems": [str(exc)]}
        if args.engines is not None:
            result["engine"] = _check_engine(args, spec, onnx)
        verdicts = [part.get("ok") for part in result.values()]
        failed |= any(v is False for v in verdicts)
        print(f"{spec.name}: {'FAIL' if any(v is False for v in verdicts) else 'ok'}")
        summary["graphs"][spec.name] = result
    if args.checkpoint is not None:
        summary["torch_vs_onnx"] = torch_check = _verify_against_torch(args)
        failed |= not torch_check["ok"]
    _report(summary)
    return 1 if failed else 0


def _verify_against_torch(args) -> dict:
    """The model-specific comparison (``vla_driver.runtime.parity``) on frames the simulator side resolves."""
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)  # simulator frames as its cameras see them
        frames = observations_for(args.frames or (args.sim_frames or None), checkpoint_rig(checkpoint),
                                  read_manifest(checkpoint)["config"].get("history", 1))
        report = verify_onnx_against_torch(args.checkpoint, args.spec.parent, frames, progress=True)
    except Exception as exc:  # report any failure of the model-side check instead of a traceback
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    ok = not (isinstance(report, dict) and report.get("ok") is False)
    return {"ok": ok, "report": report}


def run_export(args) -> int:
    specs = export_checkpoint(args.checkpoint, args.out, weights=args.weights)  # writes graphs.json too
    for spec in specs:
        print(f"{spec.name}: {spec.onnx_file} inputs {list(spec.inputs)} -> outputs {list(spec.outputs)}")
    print(f"wrote {Path(args.out) / 'graphs.json'}")
    return 0


# ---- entry points -------------------------------------------------------------------------------------
def script_main(add_arguments: Callable[[argparse.ArgumentParser], None], handler: Callable[[object], int],
                description: str, argv: list[str] | None = None) -> int:
    """What each trt/*.py script runs: the same arguments and handler as the CLI subcommand."""
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    return int(handler(parser.parse_args(argv)) or 0)


def register(sub) -> None:
    build = sub.add_parser("build-engine", help="build TensorRT engines from exported ONNX graphs (on the car)")
    add_build_arguments(build)
    build.set_defaults(func=run_build_engine)
    verify = sub.add_parser("verify", help="check exported graphs and engines (hashes, operators, cache, numerics)")
    add_verify_arguments(verify)
    verify.set_defaults(func=run_verify)
