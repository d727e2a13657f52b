"""Export a checkpoint to ONNX: per adapter merged into the base, vision encoder and heads inside the graphs.

Graphs (all take the raw uint8 camera image; resizing happens inside so every backend sees the same pixels):

* ``decision_scorer``: images, ego, input_ids, lengths -> log_probs (B, S, P), the single-pass table.
* ``action_planner``: images, ego, input_ids, lengths -> trajectories (B, S, N, 3).
* ``prompt_embedder`` + ``decoder_step`` (decision adapter): slow thinking with a KV cache. The embedder
  turns the prompt into embeddings; the step takes embeddings + past keys/values and returns logits + the
  new cache. Token embeddings for generated tokens come from ``token_embeddings.npy`` (the tied matrix),
  hashed in the step graph's spec (``side_files``).

Exported with an example sequence length >= 2 so the sequence axis stays dynamic.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from transformers import DynamicCache

from .. import __version__
from ..core.types import CAMERA_SIZE, Observation
from ..core.vocabulary import Decision
from ..model.checkpoint import load_checkpoint, sha256_file
from .graph_spec import TOKEN_EMBEDDINGS, GraphSpec, TensorSpec, save_graph_specs
from .policy import TorchPolicy

log = logging.getLogger(__name__)
OPSET = 17
SPEC_FILE = "graphs.json"
SHARED_WEIGHTS = "weights.onnx.data"
PAGE = 1 << 16  # tensor offsets in the weights file: aligned to 64 KiB pages (aarch64 kernels' largest)
GRAPH_FORMAT = 6  # bump whenever the graphs' inputs, outputs or internals change (2: resize inside the graph,
# 3: the decision scorer applies the LM head to the positions it reads only, 4: and to the candidate words only,
# 5: every graph's weights in one shared weights.onnx.data, 6: the token embeddings' hash in the spec)


def exporter_id(weights: str = "float32") -> str:
    """Who wrote a graph: graph format, package and torch versions, and a weight format other than float32.
    Graphs from another exporter are re-made (so the runtime never runs float16-stored weights)."""
    base = f"graphs-{GRAPH_FORMAT}/vla_driver-{__version__}/torch-{torch.__version__}"
    return base if weights == "float32" else f"{base}/weights-{weights}"


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


class SharedWeights:
    """The one weights file of an export (ONNX external data, ``weights.onnx.data``): every graph's tensors
    of ``min_bytes`` or more, each distinct tensor once at a page-aligned offset. The two merged adapters'
    graphs differ only in their attention projections, so the base is stored once on disk; ONNX Runtime
    maps the aligned tensors it does not repack (``OrtSessions``)."""

    def __init__(self, path: Path, min_bytes: int = 1024):
        self.path, self.min_bytes = path, min_bytes
        self.file = open(path, "wb")
        self.offsets: dict[bytes, tuple[int, int]] = {}

    def externalize(self, graph: onnx.ModelProto) -> None:
        """Move ``graph``'s large tensors into the file; the graph keeps references (location, offset)."""
        for tensor in graph.graph.initializer:
            raw = onnx.numpy_helper.to_array(tensor).tobytes()
            if len(raw) < self.min_bytes:
                continue
            key = hashlib.sha256(raw).digest() + repr((tensor.data_type, tuple(tensor.dims))).encode()
            if key not in self.offsets:
                offset = -(-self.file.seek(0, 2) // PAGE) * PAGE
                self.file.seek(offset)
                self.file.write(raw)
                self.offsets[key] = (offset, len(raw))
            offset, length = self.offsets[key]
            onnx.external_data_helper.set_external_data(tensor, SHARED_WEIGHTS, offset, length)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL

    def close(self) -> dict:
        """The spec fields every graph of the export gets."""
        self.file.close()
        self.path.chmod(0o644)
        return {"data_file": self.path.name, "data_sha256": sha256_file(self.path)}

    def __enter__(self) -> SharedWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # after close(), or an export that failed half way: its file is not a weights file
        if exc[0] is not None:
            self.path.unlink(missing_ok=True)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict,
            store: SharedWeights, weights: str = "float32") -> None:
    """Write ``path`` with its weights in ``store`` (torch alone would write one file per tensor past
    protobuf's 2 GiB). ``weights="float16"``: see :func:`store_weights_fp16`."""
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(staged), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        graph = onnx.load(str(staged))  # with any per-tensor files torch wrote
    if weights == "float16":
        store_weights_fp16(graph)
    store.externalize(graph)
    onnx.save_model(graph, str(path))


WEIGHT_INPUTS = {"MatMul": (1,), "Gemm": (1, 2), "Conv": (1, 2), "Gather": (0,)}  # op -> inputs that are weights


def store_weights_fp16(graph: onnx.ModelProto) -> None:
    """Store every float32 weight (the matrices, embeddings and kernels of ``WEIGHT_INPUTS``; not constants
    such as RoPE's frequencies, which float16 would blur) as float16, clipped to its range and read through
    a Cast back to float32: half the bytes, the input TensorRT's FP16 build wants, while ONNX Runtime's CPU
    kernels still compute in float32 (so the graph stays verifiable here)."""
    weights = {node.input[i] for node in graph.graph.node for i in WEIGHT_INPUTS.get(node.op_type, ())
               if i < len(node.input)}
    casts = []
    for tensor in graph.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or tensor.name not in weights:
            continue
        name = tensor.name
        half = np.clip(onnx.numpy_helper.to_array(tensor), -65504, 65504).astype(np.float16)
        tensor.CopyFrom(onnx.numpy_helper.from_array(half, f"{name}.fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}.fp16"], [name], name=f"{name}.to_fp32",
                                           to=onnx.TensorProto.FLOAT))
    nodes = [*casts, *graph.graph.node]  # weights come first: the graph stays topologically sorted
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)


def example_inputs(policy, batch: int = 1):
    """A real observation-shaped example from the model's own encoder (seq length well above 2)."""
    rng = np.random.default_rng(0)
    cfg = policy.model.cfg
    shape = (*CAMERA_SIZE, 3) if cfg.rig is None else (cfg.views, cfg.vision.image_height, cfg.vision.image_width, 3)
    obs = [Observation(rng.integers(0, 255, shape, dtype=np.uint8), 8.0 + i, "Go straight for 100m")
           for i in range(batch)]
    enc = policy.encoder
    dec_ids, dec_len = enc.pad(enc.decision_rows(obs))
    act_ids, act_len = enc.pad(enc.action_rows(obs, [Decision(policy.vocab.speeds[0], policy.vocab.paths[0])] * batch))
    return enc.images(obs), enc.ego(obs), (dec_ids, dec_len), (act_ids, act_len)


def _image_specs(max_batch: int, cfg) -> tuple[dict, dict, dict]:
    """Inputs, TensorRT profiles and ONNX dynamic axes of the images: without a rig one image of any size
    (resized in the graph); with one, (batch, views, h, w, 3) at the model's size (fitted before the graph)."""
    h, w = cfg.vision.image_height, cfg.vision.image_width
    if cfg.rig is None:
        images = TensorSpec("uint8", ("batch", "height", "width", 3), (0, 255))
        profile = ((1, h, w, 3), (1, h, w, 3), (max_batch, 720, 1280, 3))
        axes = {0: "batch", 1: "height", 2: "width"}
    else:
        images = TensorSpec("uint8", ("batch", cfg.views, h, w, 3), (0, 255))
        profile = ((1, cfg.views, h, w, 3), (1, cfg.views, h, w, 3), (max_batch, cfg.views, h, w, 3))
        axes = {0: "batch"}
    inputs = {"images": images, "ego": TensorSpec("float32", ("batch", 3), (0, 20))}
    profiles = {"images": profile, "ego": ((1, 3), (1, 3), (max_batch, 3))}
    return inputs, profiles, {"images": axes, "ego": {0: "batch"}}


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, max_batch: int = 8,
                      max_seq: int = 256, weights: str = "float32") -> list[GraphSpec]:
    """Write the ONNX graphs + ``graphs.json`` (+ hashes) for a checkpoint. Returns the specs.
    ``weights="float16"`` stores the weights in half precision (``store_weights_fp16``) for TensorRT.
    The graphs are written into a folder beside ``out_dir`` that then replaces it whole: a running process
    that mapped the old weights file keeps reading the old, intact one."""
    if weights not in ("float32", "float16"):
        raise ValueError(f"weights must be float32 or float16, got {weights!r}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        specs = _export_all(Path(checkpoint_dir), staging, max_batch, max_seq, weights)
        staging.chmod(0o755)  # mkdtemp makes it private; the nodes may run as another user
        old = staging.with_name(staging.name + ".old")
        if out_dir.exists():
            out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return specs


def _export_all(checkpoint_dir: Path, out_dir: Path, max_batch: int, max_seq: int, weights: str) -> list[GraphSpec]:
    model = load_checkpoint(checkpoint_dir)
    ckpt_sha = sha256_file(checkpoint_dir / "manifest.json")
    policy = TorchPolicy(model)
    images, ego, (dec_ids, dec_len), (act_ids, act_len) = example_inputs(policy, batch=2)
    cfg, vocab = model.cfg, model.vocab
    s, p, n = len(vocab.speeds), len(vocab.paths), cfg.num_waypoints
    vocab_size = len(model.tokenizer)
    img_inputs, img_profiles, img_axes = _image_specs(max_batch, cfg)
    seq_inputs = {
        "input_ids": TensorSpec("int64", ("batch", "seq"), (0, vocab_size - 1)),
        "lengths": TensorSpec("int64", ("batch",), (2, 2)),
    }
    dyn = {**img_axes, "input_ids": {0: "batch", 1: "seq"}, "lengths": {0: "batch"}}
    specs = []
    with SharedWeights(out_dir / SHARED_WEIGHTS) as store:
        for name, adapter, wrapper, ids, lengths, out_name, out_shape, min_seq in (
            ("decision_scorer", "decision", DecisionScorer, dec_ids, dec_len, "log_probs", ("batch", s, p), dec_len.min()),
            ("action_planner", "action", ActionPlanner, act_ids, act_len, "trajectories", ("batch", s, n, 3),
             act_len.min()),
        ):
            start = time.perf_counter()
            merged = model.merged_copy(adapter)
            path = out_dir / f"{name}.onnx"
            _export(wrapper(merged), (images, ego, ids, lengths), path, ["images", "ego", "input_ids", "lengths"],
                    [out_name], {**dyn, out_name: {0: "batch"}}, store, weights)
            profiles = {**img_profiles, "input_ids": ((1, int(min_seq)), (1, int(ids.shape[1])), (max_batch, max_seq)),
                        "lengths": ((1,), (1,), (max_batch,))}
            specs.append(GraphSpec(name, path.name, {**img_inputs, **seq_inputs},
                                   {out_name: TensorSpec("float32", out_shape)}, profiles, checkpoint_sha256=ckpt_sha,
                                   adapter=adapter, onnx_sha256=sha256_file(path)).validate())
            log.info("exported %s in %.1f s", name, time.perf_counter() - start)
        specs += _export_decoder(model, out_dir, images[:1], ego[:1], dec_ids[:1, : int(dec_len[0])], ckpt_sha,
                                 max_batch, max_seq, img_inputs, img_profiles, img_axes, store, weights)
        data = store.close()
    for spec in specs:
        spec.exporter, spec.data_file, spec.data_sha256 = exporter_id(weights), data["data_file"], data["data_sha256"]
    save_graph_specs(specs, out_dir / SPEC_FILE)
    return specs


def _export_decoder(model, out_dir, images, ego, ids, ckpt_sha, max_batch, max_seq, img_inputs, img_profiles,
                    img_axes, store, weights):
    merged = model.merged_copy("decision")
    llm = merged.llm
    cfg = llm.config
    layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hidden = cfg.hidden_size
    specs = []

    path = out_dir / "prompt_embedder.onnx"
    _export(PromptEmbedder(merged), (images, ego, ids), path, ["images", "ego", "input_ids"], ["inputs_embeds"],
            {**img_axes, "input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}}, store,
            weights)
    specs.append(GraphSpec(
        "prompt_embedder", path.name,
        {**img_inputs, "input_ids": TensorSpec("int64", ("batch", "seq"), (0, len(model.tokenizer) - 1))},
        {"inputs_embeds": TensorSpec("float32", ("batch", "seq", hidden))},
        {**img_profiles, "input_ids": ((1, ids.shape[1]), (1, ids.shape[1]), (max_batch, max_seq))},
        checkpoint_sha256=ckpt_sha, adapter="decision", onnx_sha256=sha256_file(path)).validate())

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
            ["inputs_embeds", "attention_mask", "position_ids", *names_past], ["logits", *names_present], dyn,
            store, weights)
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
    np.save(out_dir / TOKEN_EMBEDDINGS, llm.get_input_embeddings().weight.detach().numpy())
    specs.append(GraphSpec("decoder_step", path.name, inputs, outputs, profiles, checkpoint_sha256=ckpt_sha,
                           adapter="decision", onnx_sha256=sha256_file(path),
                           side_files={TOKEN_EMBEDDINGS: sha256_file(out_dir / TOKEN_EMBEDDINGS)}))
    return specs
