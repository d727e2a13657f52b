"""Export a checkpoint to ONNX: per adapter merged into the base, vision encoder and heads inside the graphs.

Graphs (all take the raw uint8 camera image; resizing happens inside so every backend sees the same pixels):

* ``decision_scorer``: images, ego, input_ids, lengths -> log_probs (B, S, P), the single-pass table.
* ``action_planner``: images, ego, input_ids, lengths -> trajectories (B, S, N, 3).
* ``prompt_embedder`` + ``decoder_step`` (decision adapter): slow thinking with a KV cache. The embedder
  turns the prompt into embeddings; the step takes embeddings + past keys/values and returns logits + the
  new cache. Token embeddings for generated tokens come from ``token_embeddings.npy`` (the tied matrix).

Exported with an example sequence length >= 2 so the sequence axis stays dynamic.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .graph_spec import GraphSpec, TensorSpec, save_graph_specs

log = logging.getLogger(__name__)
OPSET = 17
SPEC_FILE = "graphs.json"
GRAPH_FORMAT = 3  # bump whenever the graphs' inputs, outputs or internals change (2: resize inside the graph,
# 3: the decision scorer applies the LM head to the positions it reads only)


def exporter_id() -> str:
    """Who wrote a graph: graph format, package and torch versions. Graphs from another exporter are re-made."""
    from .. import __version__

    return f"graphs-{GRAPH_FORMAT}/vla_driver-{__version__}/torch-{torch.__version__}"


class DecisionScorer(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, ego, input_ids, lengths):
        return self.model.decision_log_probs(images, ego, input_ids, lengths)


class ActionPlanner(DecisionScorer):
    def forward(self, images, ego, input_ids, lengths):
        return self.model.trajectories(images, ego, input_ids, lengths)


class PromptEmbedder(DecisionScorer):
    def forward(self, images, ego, input_ids):
        return self.model.embed_prompt(images, ego, input_ids)


class DecoderStep(nn.Module):
    """One KV-cache step of the merged LLM: flat past tensors in, logits + flat present tensors out."""

    def __init__(self, llm, num_layers: int):
        super().__init__()
        self.llm, self.num_layers = llm, num_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=True)
        present = []
        for i in range(self.num_layers):
            layer = out.past_key_values.layers[i]
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def example_inputs(policy, batch: int = 1):
    """A real observation-shaped example from the model's own encoder (seq length well above 2)."""
    from ..core.types import Observation
    from ..core.vocabulary import Decision

    rng = np.random.default_rng(0)
    obs = [Observation(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8), 8.0 + i, "Go straight for 100m")
           for i in range(batch)]
    enc = policy.encoder
    dec_ids, dec_len = enc.pad(enc.decision_rows(obs))
    act_ids, act_len = enc.pad(enc.action_rows(obs, [Decision(policy.vocab.speeds[0], policy.vocab.paths[0])] * batch))
    return enc.images(obs), enc.ego(obs), (dec_ids, dec_len), (act_ids, act_len)


def _image_specs(max_batch: int, cfg) -> tuple[dict, dict]:
    h, w = 128, 256
    inputs = {
        "images": TensorSpec("uint8", ("batch", "height", "width", 3), (0, 255)),
        "ego": TensorSpec("float32", ("batch", 3), (0, 20)),
    }
    profiles = {
        "images": ((1, cfg.vision.image_height, cfg.vision.image_width, 3), (1, h, w, 3), (max_batch, 720, 1280, 3)),
        "ego": ((1, 3), (1, 3), (max_batch, 3)),
    }
    return inputs, profiles


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, max_batch: int = 8,
                      max_seq: int = 256) -> list[GraphSpec]:
    """Write the ONNX graphs + ``graphs.json`` (+ hashes) for a checkpoint. Returns the specs."""
    from ..model.checkpoint import load_checkpoint, sha256_file
    from .policy import TorchPolicy

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint_dir)
    ckpt_sha = sha256_file(checkpoint_dir / "manifest.json")
    policy = TorchPolicy(model)
    images, ego, (dec_ids, dec_len), (act_ids, act_len) = example_inputs(policy, batch=2)
    cfg, vocab = model.cfg, model.vocab
    s, p, n = len(vocab.speeds), len(vocab.paths), cfg.num_waypoints
    vocab_size = len(model.tokenizer)
    img_inputs, img_profiles = _image_specs(max_batch, cfg)
    seq_inputs = {
        "input_ids": TensorSpec("int64", ("batch", "seq"), (0, vocab_size - 1)),
        "lengths": TensorSpec("int64", ("batch",), (2, 2)),
    }
    dyn = {"images": {0: "batch", 1: "height", 2: "width"}, "ego": {0: "batch"}, "input_ids": {0: "batch", 1: "seq"},
           "lengths": {0: "batch"}}
    specs = []
    for name, adapter, wrapper, ids, lengths, out_name, out_shape, min_seq in (
        ("decision_scorer", "decision", DecisionScorer, dec_ids, dec_len, "log_probs", ("batch", s, p), dec_len.min()),
        ("action_planner", "action", ActionPlanner, act_ids, act_len, "trajectories", ("batch", s, n, 3),
         act_len.min()),
    ):
        start = time.perf_counter()
        merged = model.merged_copy(adapter)
        path = out_dir / f"{name}.onnx"
        _export(wrapper(merged), (images, ego, ids, lengths), path, ["images", "ego", "input_ids", "lengths"],
                [out_name], {**dyn, out_name: {0: "batch"}})
        profiles = {**img_profiles, "input_ids": ((1, int(min_seq)), (1, int(ids.shape[1])), (max_batch, max_seq)),
                    "lengths": ((1,), (1,), (max_batch,))}
        specs.append(GraphSpec(name, path.name, {**img_inputs, **seq_inputs},
                               {out_name: TensorSpec("float32", out_shape)}, profiles, sha256_file(path), ckpt_sha,
                               adapter).validate())
        log.info("exported %s in %.1f s", name, time.perf_counter() - start)
    specs += _export_decoder(model, out_dir, images[:1], ego[:1], dec_ids[:1, : int(dec_len[0])], ckpt_sha,
                             max_batch, max_seq, img_inputs, img_profiles)
    for spec in specs:
        spec.exporter = exporter_id()
    save_graph_specs(specs, out_dir / SPEC_FILE)
    return specs


def _export_decoder(model, out_dir, images, ego, ids, ckpt_sha, max_batch, max_seq, img_inputs, img_profiles):
    from ..model.checkpoint import sha256_file

    merged = model.merged_copy("decision")
    llm = merged.llm
    cfg = llm.config
    layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hidden = cfg.hidden_size
    specs = []

    path = out_dir / "prompt_embedder.onnx"
    _export(PromptEmbedder(merged), (images, ego, ids), path, ["images", "ego", "input_ids"], ["inputs_embeds"],
            {"images": {0: "batch", 1: "height", 2: "width"}, "ego": {0: "batch"},
             "input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}})
    specs.append(GraphSpec(
        "prompt_embedder", path.name,
        {**img_inputs, "input_ids": TensorSpec("int64", ("batch", "seq"), (0, len(model.tokenizer) - 1))},
        {"inputs_embeds": TensorSpec("float32", ("batch", "seq", hidden))},
        {**img_profiles, "input_ids": ((1, ids.shape[1]), (1, ids.shape[1]), (max_batch, max_seq))},
        sha256_file(path), ckpt_sha, "decision").validate())

    with torch.no_grad():
        embeds = merged.embed_prompt(images, ego, ids)
        t0 = embeds.shape[1] - 3  # prefill all but 3 tokens, then export a 3-token step over that cache
        pre = llm(inputs_embeds=embeds[:, :t0], use_cache=True)
    past = []
    for i in range(layers):
        past += [pre.past_key_values.layers[i].keys, pre.past_key_values.layers[i].values]
    step_embeds = embeds[:, t0:]
    mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
    pos = torch.arange(t0, embeds.shape[1])[None]
    names_past = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    names_present = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    dyn = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dyn.update({k: {0: "batch", 2: "past"} for k in names_past})
    dyn.update({k: {0: "batch", 2: "total"} for k in names_present})
    path = out_dir / "decoder_step.onnx"
    _export(DecoderStep(llm, layers), (step_embeds, mask, pos, *past), path,
            ["inputs_embeds", "attention_mask", "position_ids", *names_past], ["logits", *names_present], dyn)
    kv = ("batch", kv_heads, "past", head_dim)
    inputs = {"inputs_embeds": TensorSpec("float32", ("batch", "seq", hidden)),
              "attention_mask": TensorSpec("int64", ("batch", "total"), (1, 1)),
              "position_ids": TensorSpec("int64", ("batch", "seq"), (0, 0))}
    inputs.update({k: TensorSpec("float32", kv) for k in names_past})
    outputs = {"logits": TensorSpec("float32", ("batch", "seq", len(model.tokenizer)))}
    outputs.update({k: TensorSpec("float32", ("batch", kv_heads, "total", head_dim)) for k in names_present})
    kv_prof = ((1, kv_heads, 1, head_dim), (1, kv_heads, 64, head_dim), (max_batch, kv_heads, max_seq, head_dim))
    profiles = {"inputs_embeds": ((1, 1, hidden), (1, 1, hidden), (max_batch, max_seq, hidden)),
                "attention_mask": ((1, 2), (1, 65), (max_batch, 2 * max_seq)),
                "position_ids": ((1, 1), (1, 1), (max_batch, max_seq))}
    profiles.update({k: kv_prof for k in names_past})
    specs.append(GraphSpec("decoder_step", path.name, inputs, outputs, profiles, sha256_file(path), ckpt_sha,
                           "decision"))
    np.save(out_dir / "token_embeddings.npy", llm.get_input_embeddings().weight.detach().numpy())
    return specs


def verify_onnx_against_torch(checkpoint_dir: str | Path, onnx_dir: str | Path | None = None, frames=None,
                              generate_tokens: int = 16, threads: int = 2, progress: bool = False) -> dict:
    """Parity of ONNX Runtime against torch on the same observations.

    ``frames``: a list of Observations, a number of simulator frames to record with the expert driving, a
    dataset directory (``record-expert`` shards), or None (16 synthetic frames). Reports decision agreement,
    the largest probability and trajectory differences, and whether KV-cache decoding in ORT matches
    ``generate`` token for token.
    """
    from tqdm import tqdm

    from ..core.vocabulary import greedy_candidate
    from ..model.checkpoint import load_checkpoint, sha256_file, verify_checkpoint
    from .graph_spec import load_graph_specs
    from .onnx_backend import OrtSession
    from .policy import TorchPolicy, graph_policy

    checkpoint_dir = Path(checkpoint_dir)
    onnx_dir = Path(onnx_dir) if onnx_dir else checkpoint_dir / "onnx"
    manifest = verify_checkpoint(checkpoint_dir)
    specs = {s.name: s for s in load_graph_specs(onnx_dir / SPEC_FILE)}
    stale = [n for n, s in specs.items() if s.checkpoint_sha256 != sha256_file(checkpoint_dir / "manifest.json")]
    if stale:
        raise ValueError(f"graphs {stale} in {onnx_dir} were exported from another checkpoint")
    runners = {n: OrtSession(onnx_dir / s.onnx_file, s.onnx_sha256, threads) for n, s in specs.items()}
    ort = graph_policy(runners, specs, onnx_dir, manifest, "onnxruntime", checkpoint_dir)
    ref = TorchPolicy(load_checkpoint(checkpoint_dir))
    frames = observations_for(frames)
    agree, n, max_prob, max_traj, min_margin, flips = 0, 0, 0.0, 0.0, 1.0, []
    for i, obs in enumerate(tqdm(frames, desc="parity", disable=not progress)):
        a, b = ref.decision_table([obs])[0], ort.decision_table([obs])[0]
        da, db = greedy_candidate(np.exp(a)), greedy_candidate(np.exp(b))  # as the policies decide
        top2 = np.sort(np.exp(a).ravel())[-2:]
        margin = float(top2[1] - top2[0])  # how close the frame was to a tie: flips can only happen near 0
        min_margin = min(min_margin, margin)
        if da != db:
            flips.append({"frame": i, "top2_margin": margin})
        agree += da == db
        n += 1
        max_prob = max(max_prob, float(np.abs(np.exp(a) - np.exp(b)).max()))
        decision = ref.decide(obs).decision
        ta = ref.trajectory_modes([obs], [decision])[0]
        tb = ort.trajectory_modes([obs], [decision])[0]
        max_traj = max(max_traj, float(np.abs(ta - tb).max()))
    obs = frames[0]
    prompt = ref.encoder.prompt_ids(obs) + ref.encoder.ids("<think>")
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        ref.model.select_adapter("decision")
        embeds = ref.model.embed_prompt(ref.encoder.images([obs]), ref.encoder.ego([obs]), ids)
        tok = ref.model.tokenizer
        expected = ref.model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                          max_new_tokens=generate_tokens, min_new_tokens=generate_tokens,
                                          do_sample=False, pad_token_id=tok.pad_token_id)[0].tolist()
    got = ort.generate_ids(obs, prompt, generate_tokens, stop_ids=set())
    report = {"frames": n, "decision_agreement": agree / max(n, 1), "max_prob_diff": max_prob,
              "max_traj_diff_m": max_traj, "generate_token_identical": got == expected,
              "generated_tokens": len(got), "min_top2_margin": min_margin, "disagreements": flips}
    report["ok"] = bool(report["decision_agreement"] == 1.0 and max_traj <= 1e-3 and report["generate_token_identical"])
    return report


def example_observation(seed: int):
    from ..core.types import Observation

    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8), float(rng.uniform(0, 25)),
                       "Go straight for 100m")


def observations_for(frames) -> list:
    """Resolve the ``frames`` argument of :func:`verify_onnx_against_torch` into Observations."""
    from ..core.types import Observation

    if frames is None:
        return [example_observation(i) for i in range(16)]
    if isinstance(frames, int):
        return simulator_observations(frames)
    if isinstance(frames, (str, Path)):
        from ..sim.dataset import load_dataset

        data = load_dataset(frames)
        return [Observation(data["image"][i], float(data["ego"][i, 0]), str(data["navigation"][i]),
                            float(data["ego"][i, 1]), float(data["ego"][i, 2])) for i in range(len(data["image"]))]
    return list(frames)


def simulator_observations(count: int, scenarios=("highway", "merge", "roundabout", "intersection")) -> list:
    """``count`` camera frames (+ ego state, navigation) from the expert driving held-out episodes."""
    from ..core.types import Observation
    from ..sim.closed_loop import HELDOUT_SEEDS, run_episode
    from ..sim.expert import ExpertPolicy

    out: list = []
    seed = iter(HELDOUT_SEEDS)
    while len(out) < count:
        for scenario in scenarios:
            _, recorded = run_episode(ExpertPolicy(), scenario, next(seed), record_frames=True)
            out += [Observation(f["image"], float(f["speed"]), str(f["navigation"])) for f in recorded]
    return out[:count]
