"""ONNX export, ONNX Runtime parity with torch, backend selection and hash checks on the real graphs."""
import shutil

import numpy as np
import onnx
import pytest

from vla_driver.runtime.export import SPEC_FILE, export_checkpoint
from vla_driver.runtime.graph_spec import load_graph_specs, sample_feeds
from vla_driver.runtime.loading import load_policy
from vla_driver.runtime.onnx_ops import unsupported_ops
from vla_driver.runtime.parity import example_observation, verify_onnx_against_torch


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("export") / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    export_checkpoint(ckpt, ckpt / "onnx")
    return ckpt


def test_graphs_and_specs(exported):
    specs = {s.name: s for s in load_graph_specs(exported / "onnx" / SPEC_FILE)}
    assert set(specs) == {"decision_scorer", "action_planner", "prompt_embedder", "decoder_step"}
    for spec in specs.values():
        spec.validate()
        model = onnx.load(str(exported / "onnx" / spec.onnx_file))
        onnx.checker.check_model(model)
        assert unsupported_ops(model) == [], spec.name  # TensorRT's ONNX parser can take every node
        assert spec.adapter in ("decision", "action") and len(spec.checkpoint_sha256) == 64
    # the sequence axis stayed dynamic (example length >= 2 at export)
    seq = specs["decision_scorer"].inputs["input_ids"].shape[1]
    assert isinstance(seq, str)


def test_onnxruntime_matches_torch(exported):
    frames = [example_observation(i) for i in range(8)]
    report = verify_onnx_against_torch(exported, frames=frames, generate_tokens=12)
    assert report["decision_agreement"] == 1.0 and report["disagreements"] == []
    assert 0.0 <= report["min_top2_margin"] <= 1.0
    assert report["max_traj_diff_m"] <= 1e-3
    assert report["max_prob_diff"] <= 1e-4
    assert report["generate_token_identical"] and report["generated_tokens"] == 12


def test_changed_token_embeddings_are_refused_at_load(exported, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported, ckpt)
    embeddings = ckpt / "onnx" / "token_embeddings.npy"
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 0xFF
    embeddings.write_bytes(bytes(data))
    policy = load_policy(ckpt, backend="onnxruntime")
    assert policy.backend_name == "torch" and any("token_embeddings.npy" in w for w in policy.backend_choice.warnings)


def test_the_thinking_graphs_open_only_when_the_policy_thinks(exported):
    """Every ORT session keeps its own packed copy of its weights: a node that never thinks never pays for
    the decoding graphs."""
    policy = load_policy(exported, backend="onnxruntime")
    assert set(policy.runners.open) == {"decision_scorer", "action_planner"}
    policy.decide(example_observation(0))
    assert set(policy.runners.open) == {"decision_scorer", "action_planner"}
    policy.decide(example_observation(0), think=True)
    assert set(policy.runners.open) == set(policy.runners) == {"decision_scorer", "action_planner",
                                                                "prompt_embedder", "decoder_step"}


def test_auto_picks_onnxruntime_without_tensorrt(exported):
    policy = load_policy(exported, backend="auto")
    assert policy.backend_name == "onnxruntime"
    assert "TensorRT" in policy.backend_choice.reason
    explicit = load_policy(exported, backend="tensorrt")
    assert explicit.backend_name == "onnxruntime"
    assert any("requested tensorrt" in w for w in explicit.backend_choice.warnings)
    obs = example_observation(3)
    torch_policy = load_policy(exported, backend="torch")
    np.testing.assert_allclose(policy.decide(obs).probs, torch_policy.decide(obs).probs, atol=1e-5)
    assert policy.decide(obs, think=True).decision.speed in policy.vocab.speeds


def test_corrupted_onnx_falls_back_to_torch(exported, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported, ckpt)
    target = ckpt / "onnx" / "decision_scorer.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    policy = load_policy(ckpt, backend="onnxruntime")
    assert policy.backend_name == "torch"
    assert any("sha256" in w.lower() or "hash" in w.lower() for w in policy.backend_choice.warnings)
    assert policy.decide(example_observation(0)).decision.speed in policy.vocab.speeds


def test_graphs_of_another_checkpoint_are_reexported(exported, tiny_checkpoint, tmp_path):
    from vla_driver.model.build import build_random_checkpoint

    other = build_random_checkpoint(tmp_path / "other", seed=1)
    shutil.copytree(exported / "onnx", other / "onnx")  # stale graphs from a different checkpoint
    policy = load_policy(other, backend="onnxruntime")
    assert policy.backend_name == "onnxruntime"
    specs = load_graph_specs(other / "onnx" / SPEC_FILE)
    stale = load_graph_specs(exported / "onnx" / SPEC_FILE)
    assert specs[0].checkpoint_sha256 != stale[0].checkpoint_sha256


def test_graphs_from_another_exporter_are_reexported_and_current_ones_reused(exported, tmp_path):
    import json

    from vla_driver.model.checkpoint import sha256_file
    from vla_driver.runtime.export import exporter_id
    from vla_driver.runtime.loading import ensure_exported

    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported, ckpt)
    spec_file = ckpt / "onnx" / SPEC_FILE
    ckpt_sha = sha256_file(ckpt / "manifest.json")
    before = spec_file.stat().st_mtime_ns
    assert all(s.exporter == exporter_id() for s in ensure_exported(ckpt, ckpt_sha).values())
    assert spec_file.stat().st_mtime_ns == before  # same checkpoint, same exporter: reused as is

    data = json.loads(spec_file.read_text())
    for graph in data["graphs"]:
        graph["exporter"] = "graphs-1/vla_driver-0.0.9/torch-2.0"  # same weights, older exporter code
    spec_file.write_text(json.dumps(data))
    specs = ensure_exported(ckpt, ckpt_sha)
    assert all(s.exporter == exporter_id() for s in specs.values())
    assert all(s.exporter == exporter_id() for s in load_graph_specs(spec_file))


def test_graphs_accept_other_camera_sizes(exported):
    """A CARLA-sized frame (600x800) runs through the exported graph like through torch."""
    from vla_driver.core.types import Observation

    rng = np.random.default_rng(5)
    obs = Observation(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8), 9.0, "Turn right in 30m")
    ort_policy = load_policy(exported, backend="onnxruntime")
    torch_policy = load_policy(exported, backend="torch")
    assert ort_policy.backend_name == "onnxruntime"
    np.testing.assert_allclose(ort_policy.decision_table([obs]), torch_policy.decision_table([obs]), atol=1e-4)


_EXPORT_IN_CHILD = """
import sys, time
from pathlib import Path
import vla_driver.runtime.export as export
from vla_driver.model.checkpoint import sha256_file
from vla_driver.runtime.loading import ensure_exported

ckpt, ready, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
real, exports = export.export_checkpoint, []
export.export_checkpoint = lambda *a, **k: exports.append(1) or real(*a, **k)
ready.touch()
while not go.exists():
    time.sleep(0.01)
specs = ensure_exported(ckpt, sha256_file(ckpt / "manifest.json"))
print(len(exports), sorted(s.onnx_sha256 for s in specs.values()))
"""


def test_processes_opening_one_checkpoint_at_once_export_it_once(tiny_checkpoint, tmp_path):
    """``eval --workers 2`` on a fresh checkpoint: both workers want graphs at the same moment."""
    import subprocess
    import sys
    import time

    from vla_driver.model.checkpoint import sha256_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("onnx", "engines"))
    children = [subprocess.Popen([sys.executable, "-c", _EXPORT_IN_CHILD, str(ckpt), str(tmp_path / f"ready{i}"),
                                  str(tmp_path / "go")], stdout=subprocess.PIPE, text=True) for i in range(2)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(c.poll() is None for c in children), "a child died before the start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [c.communicate(timeout=300)[0].split(maxsplit=1) for c in children]
    assert all(c.returncode == 0 for c in children)
    assert sorted(int(n) for n, _ in outputs) == [0, 1]  # one exported, the other waited and reused its graphs
    assert outputs[0][1] == outputs[1][1]
    for spec in load_graph_specs(ckpt / "onnx" / SPEC_FILE):
        assert sha256_file(ckpt / "onnx" / spec.onnx_file) == spec.onnx_sha256
    assert not list(ckpt.glob(".onnx-*"))  # no staging folder left behind


def test_all_graphs_share_one_weights_file_each_tensor_once(exported, tmp_path):
    """The merged decision and action graphs differ only in attention: the weights file holds the base once,
    the graphs reference it, and a changed weights file is refused at load."""
    from vla_driver.runtime.export import SHARED_WEIGHTS

    specs = {s.name: s for s in load_graph_specs(exported / "onnx" / SPEC_FILE)}
    assert {s.data_file for s in specs.values()} == {SHARED_WEIGHTS} and len({s.data_sha256 for s in specs.values()}) == 1
    shared = (exported / "onnx" / SHARED_WEIGHTS).stat().st_size
    referenced = 0
    for spec in specs.values():
        graph = onnx.load(str(exported / "onnx" / spec.onnx_file), load_external_data=False)
        lengths = [int({e.key: e.value for e in t.external_data}["length"]) for t in graph.graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL]
        assert lengths and (exported / "onnx" / spec.onnx_file).stat().st_size < 0.1 * sum(lengths)  # the graph alone
        referenced += sum(lengths)
    assert shared < 0.6 * referenced  # four graphs' weights, the shared ones stored once
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported, ckpt)
    weights = ckpt / "onnx" / SHARED_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    policy = load_policy(ckpt, backend="onnxruntime")
    assert policy.backend_name == "torch" and any(SHARED_WEIGHTS in w for w in policy.backend_choice.warnings)


def test_float16_weights_halve_the_graphs_and_still_decide_as_float32_on_onnx_runtime(exported, tmp_path):
    from vla_driver.runtime.onnx_backend import OrtSessions

    specs = {s.name: s for s in export_checkpoint(exported, tmp_path / "fp16", weights="float16")}
    half, full = (specs["decision_scorer"].data_path(tmp_path / "fp16"), exported / "onnx" / "weights.onnx.data")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    for name, spec in specs.items():
        graph = onnx.load(str(tmp_path / "fp16" / spec.onnx_file), load_external_data=False).graph
        stored = {t.name: t.data_type for t in graph.initializer}
        assert not [n.input[1] for n in graph.node if n.op_type == "MatMul" and stored.get(n.input[1]) == onnx.TensorProto.FLOAT], name
        halves = [t for t, dtype in stored.items() if t.endswith(".fp16")]
        assert halves and all(stored[t] == onnx.TensorProto.FLOAT16 for t in halves), name
    fp32 = {s.name: s for s in load_graph_specs(exported / "onnx" / SPEC_FILE)}
    for i in range(4):
        feeds = {k: v for k, v in sample_feeds(specs["decision_scorer"], seed=i).items()}
        a = OrtSessions(specs, tmp_path / "fp16")["decision_scorer"].run(feeds)["log_probs"]
        b = OrtSessions(fp32, exported / "onnx")["decision_scorer"].run(feeds)["log_probs"]
        assert a.dtype == np.float32 and np.abs(np.exp(a) - np.exp(b)).max() < 1e-2
    with pytest.raises(ValueError, match="float32 or float16"):
        export_checkpoint(exported, tmp_path / "bad", weights="int8")
