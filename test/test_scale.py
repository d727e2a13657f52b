"""``bench scale`` end to end on the tests' stand-ins: checkpoints built and reused, every backend measured in
its own process, int8 graphs quantized and compared on simulator frames, one JSON line per row, a plot."""
import json

from vla_driver.bench import scale
from vla_driver.core.camera_rig import load_rig
from vla_driver.model.checkpoint import read_manifest
from vla_driver.sim.parity_frames import simulator_observations


def test_bench_scale_measures_every_backend_on_a_standin_and_reuses_it(tmp_path, capsys):
    records = scale.run(("tiny", "tiny+vit-x3"), scale.BACKENDS, str(tmp_path), iters=2, frames=4)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"bench"')]
    assert [(r["variant"], r["backend"]) for r in lines] == [(v, b) for v in ("tiny", "tiny+vit-x3")
                                                              for b in scale.BACKENDS]
    for r in records:
        assert r["decision_ms_p50"] > 0 and r["generate_ms_p50"] > 0 and r["cycle_ms_p50"] >= r["plan_ms_p50"] > 0
        assert r["peak_rss_thinking_mb"] >= r["peak_rss_mb"] > 100 and r["params_m"] > 0 and r["compute_limit_ms"] > 0
    small, vit3 = (next(r for r in records if r["variant"] == v and r["backend"] == "torch") for v in ("tiny", "tiny+vit-x3"))
    assert vit3["params_m"] > small["params_m"] and vit3["prompt_tokens"] == small["prompt_tokens"] + 2 * 12
    int8 = next(r for r in records if r["backend"] == "onnxruntime-int8" and r["variant"] == "tiny")
    assert int8["agreement_frames"] == 4 and 0.0 <= int8["int8_agreement"] <= 1.0
    assert (tmp_path / "scale.png").stat().st_size > 10_000 and len(json.loads((tmp_path / "scale.json").read_text())) == 6
    version = read_manifest(tmp_path / "checkpoints" / "tiny")["model_version"]
    scale.run(("tiny",), ("torch",), str(tmp_path), iters=1, frames=0)  # reused, not rebuilt
    assert read_manifest(tmp_path / "checkpoints" / "tiny")["model_version"] == version


def test_simulator_frames_for_a_rig_are_what_its_cameras_see():
    frames = simulator_observations(3, ("highway",), rig=load_rig("front3"))
    assert len(frames) == 3 and frames[0].image.shape == (3, 96, 128, 3)
