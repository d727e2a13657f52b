"""Deployment runtime: graph specs, engine cache rules, ONNX Runtime backend, backend choice, calibration data,
the build/verify scripts, and how the TensorRT parts behave where TensorRT is absent (as here)."""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vla_driver.cli import build_parser
from vla_driver.cli.deploy import add_build_arguments, run_build_engine, run_verify, script_main
from vla_driver.runtime.backend_select import BACKENDS, REQUESTS, resolve_backend
from vla_driver.runtime.calibration import calibration_batches, iter_frames, passthrough_preprocess
from vla_driver.runtime.engine_cache import (
    CacheAction,
    EngineKey,
    HashMismatchError,
    check_engine,
    check_engine_dir,
    engine_filename,
    file_sha256,
    load_failure_decision,
    manifest_path,
    verify_file_hash,
    write_manifest,
)
from vla_driver.runtime.graph_spec import (
    GraphSpec,
    TensorSpec,
    graph_spec_from_onnx,
    load_graph_specs,
    sample_feeds,
    save_graph_specs,
)
from vla_driver.runtime.onnx_backend import OrtSession, select_providers
from vla_driver.runtime.onnx_ops import unsupported_ops
from vla_driver.runtime.tensorrt_builder import EntropyCalibrator, build_engine, make_progress_monitor
from vla_driver.runtime.tensorrt_env import TensorRTUnavailable, gpu_compute_capability, tensorrt_available
from vla_driver.runtime.tensorrt_runner import TrtRunner, compare_runners, open_engine

REPO = Path(__file__).resolve().parents[1]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
CKPT = "ab" * 32
RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3)).astype(np.float32)
B = RNG.normal(size=(3,)).astype(np.float32)


# ---- fixtures -----------------------------------------------------------------------------------------
def _tiny_model() -> onnx.ModelProto:
    """y = relu(x @ W + b), idx = argmax(y, axis=1); x is (batch, 4)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"]),
        helper.make_node("ArgMax", ["y"], ["idx"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    # IR 10: onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses (max 13)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny(tmp_path) -> tuple[GraphSpec, Path]:
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_model(), str(path))
    spec = graph_spec_from_onnx(path, "tiny", profiles={"x": [(1, 4), (2, 4), (8, 4)]},
                                checkpoint_sha256=CKPT, adapter="decision")
    save_graph_specs([spec], tmp_path / "graphs.json")
    return spec, path


def _key(**changes) -> EngineKey:
    base = dict(graph="decision_scorer", checkpoint_sha256=CKPT, adapter="decision", precision="fp16",
                compute_capability="8.7", trt_version="10.3.0",
                profiles={"pixel_values": [(1, 3, 64, 64)] * 3, "input_ids": [(1, 8), (1, 32), (1, 64)]})
    base.update(changes)
    return EngineKey(**base)


def _fake_engine(directory: Path, key: EngineKey, payload: bytes = b"serialized engine bytes") -> Path:
    """An engine file written the way build_engine writes one (bytes, then manifest)."""
    path = directory / engine_filename(key)
    path.write_bytes(payload)
    write_manifest(path, key, extra={"onnx_file": "x.onnx"})
    return path


# ---- graph spec ---------------------------------------------------------------------------------------
def test_graph_spec_reads_onnx_and_round_trips(tiny, tmp_path):
    spec, path = tiny
    assert spec.inputs == {"x": TensorSpec("float32", ("batch", 4))}
    assert spec.outputs == {"y": TensorSpec("float32", ("batch", 3)), "idx": TensorSpec("int64", ("batch",))}
    assert spec.onnx_sha256 == file_sha256(path) and spec.onnx_path(tmp_path) == path
    assert load_graph_specs(tmp_path / "graphs.json") == [spec]
    assert GraphSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.input_shapes("min") == {"x": (1, 4)} and spec.input_shapes("max") == {"x": (8, 4)}
    assert spec.validate() is spec


def test_graph_spec_problems_are_named():
    spec = GraphSpec(
        name="g", onnx_file="g.onnx",
        inputs={"ids": TensorSpec("int64", ("batch", "seq")), "img": TensorSpec("float32", ("batch", 3, 8, 8)),
                "free": TensorSpec("float32", ("n",))},
        outputs={"o": TensorSpec("float32", ("batch",))},
        profiles={"ids": [(1, 4), (2, 8), (4, 6)], "img": [(1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 9, 8)],
                  "ghost": [(1,), (1,), (1,)]})
    text = "\n".join(spec.problems())
    assert "unknown input 'ghost'" in text
    assert "'free' has dynamic shape" in text
    assert "'ids' axis 1: need 0 <= min <= opt <= max" in text
    assert "'img' axis 2 is static (8)" in text
    assert "dim 'batch'" in text  # ids says batch 1/2/4, img says 1/1/2
    with pytest.raises(ValueError, match="inconsistent"):
        spec.validate()


def test_spec_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "graphs.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="graphs.json"):
        load_graph_specs(bad)
    bad.write_text(json.dumps({"graphs": [{"name": "g"}]}))
    with pytest.raises(ValueError, match="not a valid graph spec"):
        load_graph_specs(bad)


def test_sample_feeds_follow_profile_and_value_range():
    spec = GraphSpec("g", "g.onnx",
                     inputs={"ids": TensorSpec("int64", ("b", "s"), value_range=(3, 9)),
                             "x": TensorSpec("float32", ("b", 2))},
                     outputs={}, profiles={"ids": [(1, 2), (2, 5), (3, 7)], "x": [(1, 2), (2, 2), (3, 2)]})
    for point, shape in (("min", (1, 2)), ("opt", (2, 5)), ("max", (3, 7))):
        feeds = sample_feeds(spec, point)
        assert feeds["ids"].shape == shape and feeds["ids"].dtype == np.int64
        assert feeds["ids"].min() >= 3 and feeds["ids"].max() <= 9
        assert feeds["x"].dtype == np.float32 and np.abs(feeds["x"]).max() <= 1.0


# ---- engine cache rules -------------------------------------------------------------------------------
def test_valid_engine_is_used(tmp_path):
    key = _key()
    path = _fake_engine(tmp_path, key)
    decision = check_engine(path, key)
    assert decision.action is CacheAction.USE and decision.usable and decision.reasons == ()
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["engine_sha256"] == file_sha256(path) and manifest["key"] == key.to_dict()


@pytest.mark.parametrize("allow_rebuild, action", [(False, CacheAction.FALLBACK), (True, CacheAction.REBUILD)])
def test_missing_engine_and_missing_manifest(tmp_path, allow_rebuild, action):
    key = _key()
    missing = check_engine(tmp_path / engine_filename(key), key, allow_rebuild)
    assert missing.action is action and missing.reasons[0].startswith("engine: file missing")
    path = _fake_engine(tmp_path, key)
    manifest_path(path).unlink()
    no_manifest = check_engine(path, key, allow_rebuild)
    assert no_manifest.action is action and no_manifest.reasons[0].startswith("manifest: file missing")
    manifest_path(path).write_text("{broken")
    assert check_engine(path, key, allow_rebuild).reasons[0].startswith("manifest: unreadable")


def test_corrupted_engine_is_never_used(tmp_path):
    key = _key()
    path = _fake_engine(tmp_path, key)
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    decision = check_engine(path, key)
    assert decision.action is CacheAction.FALLBACK
    assert [r.split(":")[0] for r in decision.reasons] == ["engine_sha256"]
    assert "corrupted" in decision.reasons[0]


@pytest.mark.parametrize("field, value", [
    ("graph", "action_planner"), ("checkpoint_sha256", "cd" * 32), ("adapter", "action"), ("precision", "int8"),
    ("compute_capability", "8.9"), ("trt_version", "10.7.0"),
    ("profiles", {"pixel_values": [(1, 3, 64, 64)] * 3, "input_ids": [(1, 8), (1, 32), (1, 128)]}),
])
@pytest.mark.parametrize("allow_rebuild", [False, True])
def test_each_key_field_mismatch_is_named(tmp_path, field, value, allow_rebuild):
    built = _key()
    path = _fake_engine(tmp_path, built)
    expected = replace(built, **{field: value})
    decision = check_engine(path, expected, allow_rebuild=allow_rebuild)
    assert decision.action is (CacheAction.REBUILD if allow_rebuild else CacheAction.FALLBACK)
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith(field)
    if field == "trt_version":
        assert decision.reasons[0] == "trt_version: engine 10.3.0 != runtime 10.7.0"
    if field == "profiles":
        assert decision.reasons[0] == "profiles[input_ids]: engine 1x8/1x32/1x64 != runtime 1x8/1x32/1x128"


def test_deserialization_failure_is_a_stale_engine(tmp_path):
    path = tmp_path / "e.engine"
    fallback = load_failure_decision(path, RuntimeError("magic tag mismatch"))
    assert fallback.action is CacheAction.FALLBACK and "magic tag mismatch" in fallback.reasons[0]
    assert load_failure_decision(path, "bad", allow_rebuild=True).action is CacheAction.REBUILD


def test_engine_dir_lookup_names_what_changed(tmp_path):
    _fake_engine(tmp_path, _key(trt_version="10.3.0"))
    decision = check_engine_dir(tmp_path, _key(trt_version="10.7.0"))
    assert decision.action is CacheAction.FALLBACK
    assert "trt_version: engine 10.3.0 != runtime 10.7.0" in decision.reasons
    assert decision.engine_path.name == engine_filename(_key(trt_version="10.7.0"))
    assert check_engine_dir(tmp_path, _key(trt_version="10.3.0")).usable
    assert check_engine_dir(tmp_path, _key(graph="other")).reasons[0].startswith("engine: file missing")


def test_engine_filename_is_stable_readable_and_unique():
    key = _key()
    name = engine_filename(key)
    assert name == "decision_scorer-decision-fp16-sm87-trt10.3.0-cabababab-915aebda12.engine"
    reordered = _key(profiles=dict(reversed(list(_key().to_dict()["profiles"].items()))))
    assert engine_filename(reordered) == name
    # the same name in a fresh interpreter with another hash seed
    code = ("import json, sys; from vla_driver.runtime.engine_cache import EngineKey, engine_filename;"
            "print(engine_filename(EngineKey.from_dict(json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(key.to_dict())], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == name
    variants = [_key(graph="g2"), _key(checkpoint_sha256="cd" * 32), _key(adapter="action"), _key(precision="int8"),
                _key(compute_capability="8.9"), _key(trt_version="10.7.0"),
                _key(profiles={"input_ids": [(1, 8), (1, 32), (1, 65)], "pixel_values": [(1, 3, 64, 64)] * 3})]
    assert len({name, *map(engine_filename, variants)}) == 1 + len(variants)
    assert EngineKey.from_dict(key.to_dict()) == key
    with pytest.raises(ValueError, match="precision"):
        _key(precision="bf17")


def test_verify_file_hash(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"abc")
    verify_file_hash(path, file_sha256(path))
    with pytest.raises(HashMismatchError, match="model.onnx"):
        verify_file_hash(path, "0" * 64)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        verify_file_hash(tmp_path / "missing.onnx", "0" * 64)


# ---- ONNX Runtime backend ------------------------------------------------------------------------------
def test_ort_session_runs_the_graph(tiny):
    spec, path = tiny
    session = OrtSession(path, expected_sha256=spec.onnx_sha256, threads=1, providers="auto")
    assert session.providers == ["CPUExecutionProvider"]
    assert session.input_names == ["x"] and session.output_names == ["y", "idx"]
    x = np.random.default_rng(1).normal(size=(5, 4))  # float64: cast to the graph's float32
    out = session.run({"x": x})
    want = np.maximum(x.astype(np.float32) @ W + B, 0)
    np.testing.assert_allclose(out["y"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["idx"], want.argmax(axis=1))
    with pytest.raises(KeyError, match="missing"):
        session.run({"z": x})


def test_ort_session_refuses_a_corrupted_onnx_file(tiny, tmp_path):
    spec, path = tiny
    corrupted = tmp_path / "corrupted.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    corrupted.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match="corrupted.onnx"):
        OrtSession(corrupted, expected_sha256=spec.onnx_sha256)
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        OrtSession(tmp_path / "nowhere.onnx")


def test_provider_selection():
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("auto", gpu) == gpu
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers("cuda", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("tensorrt", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_compare_runners_detects_disagreement(tiny):
    spec, path = tiny
    a, b = OrtSession(path, threads=1), OrtSession(path, threads=1)
    rows = compare_runners(a, b, spec, "fp32")
    assert len(rows) == 6 and all(r["ok"] for r in rows)  # 3 profile points x 2 outputs

    class Shifted:
        def run(self, feeds):
            return {k: v + 1 for k, v in b.run(feeds).items()}

    bad = compare_runners(a, Shifted(), spec, "fp16")
    assert not any(r["ok"] for r in bad)
    assert {r["output"] for r in bad} == {"y", "idx"}


# ---- backend choice -----------------------------------------------------------------------------------
@pytest.mark.parametrize("requested", REQUESTS)
def test_backend_resolution_every_combination(requested):
    for trt_ok, engines_ok, ort_ok, torch_ok in itertools.product([False, True], repeat=4):
        choice = resolve_backend(requested, engines_ok, ort_ok, trt_available=(trt_ok, "why"), torch_ok=torch_ok)
        usable = {"tensorrt": trt_ok and engines_ok, "onnxruntime": ort_ok, "torch": torch_ok}
        first_usable = next((b for b in BACKENDS if usable[b]), "none")
        assert choice.requested == requested
        if requested != "auto" and usable[requested]:
            assert (choice.name, choice.warnings, choice.level) == (requested, (), "OK")
        elif requested != "auto":
            assert choice.name == next((b for b in BACKENDS if b != requested and usable[b]), "none")
            assert choice.warnings and f"requested {requested}" in choice.warnings[0]
        else:
            assert choice.name == first_usable
            assert (choice.level == "WARN") == (choice.name == "torch" or (choice.name == "onnxruntime" and trt_ok))
        assert choice.level == ("ERROR" if choice.name == "none" else choice.level)
        assert set(choice.diagnostics()) == {"backend", "requested", "level", "reason", "warnings"}


def test_backend_resolution_unknown_request_and_detection():
    choice = resolve_backend("cuda", True, True, trt_available=False)
    assert choice.name == "onnxruntime" and "unknown backend 'cuda'" in choice.warnings[0]
    detected = resolve_backend("tensorrt", True, True)  # asks tensorrt_available() itself
    if not HAS_TENSORRT:
        assert detected.name == "onnxruntime" and "TensorRT unavailable" in detected.reason


# ---- calibration data ---------------------------------------------------------------------------------
def test_calibration_batches_from_a_directory(tiny, tmp_path):
    spec, _ = tiny
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i in range(5):
        np.savez(frames_dir / f"{i:03d}.npz", x=np.full(4, i, dtype=np.float64))
    (frames_dir / "999.png").write_bytes(b"not a png")  # unreadable: skipped
    (frames_dir / "notes.txt").write_text("ignored")
    frames = list(iter_frames(frames_dir))
    assert [f["x"][0] for f in frames] == [0, 1, 2, 3, 4]
    batches = list(calibration_batches(iter_frames(frames_dir), passthrough_preprocess(spec), spec))
    assert len(batches) == 2  # opt batch is 2; the fifth frame is a partial batch
    assert all(b["x"].shape == (2, 4) and b["x"].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(batches[1]["x"][:, 0], [2, 3])
    limited = list(calibration_batches(iter_frames(frames_dir), passthrough_preprocess(spec), spec, max_batches=1))
    assert len(limited) == 1


def test_calibration_from_images_and_a_simulator(tiny, tmp_path):
    from PIL import Image

    spec, _ = tiny
    Image.fromarray(np.full((6, 8, 3), 200, dtype=np.uint8)).save(tmp_path / "cam.png")
    (frame,) = iter_frames(tmp_path)
    assert frame["image"].shape == (6, 8, 3) and frame["image"].dtype == np.uint8
    with pytest.raises(ValueError, match="missing \\['x'\\]"):
        passthrough_preprocess(spec)(frame)

    counter = itertools.count()

    def simulator():
        i = next(counter)
        return None if i >= 7 else np.full((6, 8, 3), i, dtype=np.uint8)

    def preprocess(f):  # a model would resize/normalise; here: mean of 4 column bands
        return {"x": f["image"].astype(np.float32).reshape(6, 4, 2, 3).mean(axis=(0, 2, 3))}

    batches = list(calibration_batches(iter_frames(simulator, limit=5), preprocess, spec))
    assert len(batches) == 2 and batches[1]["x"][1, 0] == 3.0

    def wrong(f):
        return {"x": np.zeros(5)}

    with pytest.raises(ValueError, match="input 'x' shape \\[5\\]"):
        next(calibration_batches(iter_frames([frame]), wrong, spec))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no calibration frames"):
        list(iter_frames(empty))


# ---- scripts and CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize("script", ["build_engine.py", "verify_engine.py", "export_onnx.py"])
def test_scripts_help(script):
    out = subprocess.run([sys.executable, str(REPO / "trt" / script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage:" in out.stdout


def test_bad_precision_is_rejected(tiny, tmp_path, capsys):
    out = subprocess.run([sys.executable, str(REPO / "trt" / "build_engine.py"), "--spec", "g.json", "--out", "e",
                          "--precision", "fp64"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice: 'fp64'" in out.stderr
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build-engine", "--spec", "g.json", "--out", "e", "--precision", "bf16"])
    assert "invalid choice" in capsys.readouterr().err
    cli = build_parser().parse_args(["build-engine", "--spec", "g.json", "--out", "e", "--precision", "int8",
                                     "--calib-frames", "f", "--timing-cache", "t", "--build-only"])
    assert (cli.precision, cli.calib_frames, cli.timing_cache, cli.build_only) == ("int8", Path("f"), Path("t"), True)
    assert cli.func is run_build_engine


@pytest.mark.skipif(HAS_TENSORRT, reason="checks behaviour without TensorRT")
def test_build_engine_command_without_tensorrt(tiny, tmp_path, capsys):
    argv = ["--spec", str(tmp_path / "graphs.json"), "--out", str(tmp_path / "engines"), "--precision", "fp16"]
    assert script_main(add_build_arguments, run_build_engine, "build", argv) == 2
    assert "cannot build TensorRT engines here" in capsys.readouterr().err


def test_verify_command(tiny, tmp_path, capsys):
    spec, path = tiny
    spec_file = str(tmp_path / "graphs.json")
    assert build_parser().parse_args(["verify", "--spec", spec_file]).func is run_verify
    assert run_verify(build_parser().parse_args(["verify", "--spec", spec_file])) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["graphs"]["tiny"]["static"]["ok"] and summary["graphs"]["tiny"]["onnxruntime"]["ok"]

    engines = tmp_path / "engines"
    engines.mkdir()
    _fake_engine(engines, EngineKey.for_graph(spec, "fp16", "8.7", "10.3.0"))
    checks = ["verify", "--spec", spec_file, "--engines", str(engines), "--compute-capability", "8.7"]
    assert run_verify(build_parser().parse_args([*checks, "--trt-version", "10.3.0"])) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["graphs"]["tiny"]["engine"]["decision"] == "use"
    assert run_verify(build_parser().parse_args([*checks, "--trt-version", "10.7.0"])) == 1
    engine = json.loads(capsys.readouterr().out.splitlines()[-1])["graphs"]["tiny"]["engine"]
    assert engine["decision"] == "fallback_onnxruntime"
    assert "trt_version: engine 10.3.0 != runtime 10.7.0" in engine["reasons"]

    path.write_bytes(path.read_bytes() + b"\0")  # the ONNX file no longer matches its spec
    assert run_verify(build_parser().parse_args(["verify", "--spec", spec_file])) == 1
    assert "sha256" in capsys.readouterr().err


# ---- TensorRT parts without TensorRT ------------------------------------------------------------------
@pytest.mark.skipif(HAS_TENSORRT, reason="checks behaviour without TensorRT")
def test_tensorrt_absence_is_reported_cleanly(tiny, tmp_path):
    spec, path = tiny
    ok, reason = tensorrt_available()
    assert ok is False and "TensorRT Python bindings are not importable" in reason
    with pytest.raises(TensorRTUnavailable, match="TensorRT"):
        build_engine(path, tmp_path / "engines", spec, "fp16")
    with pytest.raises(TensorRTUnavailable):
        TrtRunner(tmp_path / "x.engine", spec)
    with pytest.raises(TensorRTUnavailable):
        EntropyCalibrator([], tmp_path / "calib.cache")
    runner, decision = open_engine(tmp_path, spec, "fp16", allow_rebuild=True)
    assert runner is None and decision.action is CacheAction.FALLBACK
    assert decision.reasons[0].startswith("tensorrt: ")
    import torch

    if not torch.cuda.is_available() and shutil.which("nvidia-smi") is None:
        assert gpu_compute_capability() is None


def test_build_engine_checks_its_inputs_before_tensorrt(tiny, tmp_path):
    spec, path = tiny
    with pytest.raises(ValueError, match="precision"):
        build_engine(path, tmp_path, spec, "fp64")
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        build_engine(tmp_path / "absent.onnx", tmp_path, spec, "fp16")
    other = tmp_path / "other.onnx"
    other.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(HashMismatchError, match="other.onnx"):
        build_engine(other, tmp_path, spec, "fp16")


def test_progress_monitor_draws_and_closes_nested_bars(capsys):
    class Base:  # stands in for trt.IProgressMonitor, which only needs its __init__ called
        def __init__(self):
            pass

    monitor = make_progress_monitor(Base)
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Tactic selection", "Building engine", 2)
    assert monitor.step_complete("Tactic selection", 0) is True
    assert monitor._bars["Tactic selection"].n == 1
    monitor.phase_finish("Tactic selection")
    for step in range(3):
        assert monitor.step_complete("Building engine", step) is True
    assert monitor._bars["Building engine"].n == 3
    monitor.phase_finish("Building engine")
    assert monitor._bars == {} and monitor.step_complete("gone", 0) is True
    assert "Building engine" in capsys.readouterr().err


# ---- ONNX operator pre-check --------------------------------------------------------------------------
def test_unsupported_ops(tiny):
    _, path = tiny
    assert unsupported_ops(path) == [] and unsupported_ops(_tiny_model()) == []
    then = helper.make_graph([helper.make_node("Unique", ["a"], ["u"])], "then", [],
                             [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    local = helper.make_function("local", "Helper", ["a"], ["b"], [helper.make_node("Compress", ["a", "a"], ["b"])],
                                 [helper.make_opsetid("", 17)])
    nodes = [
        helper.make_node("RMSNormalization", ["x", "s"], ["n"]),
        helper.make_node("FusedMatMul", ["n", "n"], ["m"], domain="com.microsoft"),
        helper.make_node("If", ["c"], ["u"], then_branch=then, else_branch=then),
        helper.make_node("Helper", ["m"], ["h"], domain="local"),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, functions=[local], opset_imports=[
        helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("local", 1)])
    assert unsupported_ops(model) == ["Compress", "RMSNormalization", "Unique", "com.microsoft::FusedMatMul"]
    assert unsupported_ops(model, allow_recent=True) == ["Compress", "Unique", "com.microsoft::FusedMatMul"]
