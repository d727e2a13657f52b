"""Checkpoint directory: safetensors only, a manifest with versions, vocabularies and sha256 of every file.

Layout::

    manifest.json                 versions, config, vocabulary, trajectory spec, lineage, files -> sha256
    base/                         the base LLM (save_pretrained, safetensors) incl. added-token embeddings,
                                  or for a referenced pretrained base only its config and added_rows.safetensors
    adapters/decision/, adapters/action/   peft adapters (adapter_model.safetensors + adapter_config.json)
    modules.safetensors           vision encoder, ego projection, trajectory head
    tokenizer/                    tokenizer.json + tokenizer_config.json

Loading verifies every hash first and refuses pickle files, so a tampered or unsafe checkpoint never runs.
A pretrained base (e.g. a local Qwen2.5-0.5B) may stay in its own directory: the manifest's ``base`` names
it with the sha256 of its files, which are verified like the checkpoint's own.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from .. import __version__
from ..core.camera_rig import CameraRig
from ..core.hashing import sha256_file
from ..core.vocabulary import DecisionVocabulary
from .config import VLAConfig
from .tokenizer import load_tokenizer
from .vla import ACTION, DECISION, VLAModel

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MODULES = ("vision", "ego_proj", "traj_head")
VIEW_EMBED = "view_embed"  # a rig model's learned embedding of each view (camera x frame)


ADDED_ROWS = "added_rows.safetensors"
PLACED_BASE = "pretrained"  # base/pretrained/: a copy of a referenced base placed inside the checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint that must not be loaded; the message says which file and why."""


@dataclass(frozen=True)
class BaseReference:
    """A pretrained base LLM left in its own (often read-only) directory: a checkpoint stores its files'
    hashes and only the embedding rows the policy tokens took (``first_added`` onwards). ``files``: the
    hashes it was loaded with (a checkpoint's manifest); None for a base just built from its directory."""

    path: str
    first_added: int
    files: dict | None = None

    def hashes(self) -> dict:
        """The recorded hashes, or those of the directory's config and weights files."""
        if self.files is not None:
            return dict(self.files)
        root = Path(self.path)
        found = [root / "config.json", *sorted(root.glob("*.safetensors"))]
        index = root / "model.safetensors.index.json"
        return {p.name: sha256_file(p) for p in (found + [index] if index.is_file() else found)}


def _versions() -> dict:
    return {"vla_driver": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def module_state(model) -> dict[str, torch.Tensor]:
    """Every trained weight outside the LLM: the modules, and a rig model's per-view embeddings."""
    state = {f"{name}.{k}": v.detach().contiguous().cpu()
             for name in MODULES for k, v in getattr(model, name).state_dict().items()}
    if hasattr(model, "view_embed"):
        state[VIEW_EMBED] = model.view_embed.detach().contiguous().cpu()
    return state


def save_base_llm(base, out: Path) -> None:
    """The base weights without the injected LoRA layers (peft wraps q/k/v/o as ``base_layer``)."""
    out.mkdir(parents=True)
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().contiguous().cpu()
    if base.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    base.config.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


@contextlib.contextmanager
def _portable_adapter_configs(llm):
    """Adapter configs name the base as ``base`` (the checkpoint's own folder) and list target modules
    sorted, so a checkpoint's files, and so its version, depend neither on where it was trained nor on
    set order."""
    saved = {name: (c.base_model_name_or_path, c.target_modules) for name, c in llm.peft_config.items()}
    for c in llm.peft_config.values():
        c.base_model_name_or_path = "base"
        if isinstance(c.target_modules, set | list | tuple):
            c.target_modules = sorted(c.target_modules)
    try:
        yield
    finally:
        for name, (base, modules) in saved.items():
            llm.peft_config[name].base_model_name_or_path = base
            llm.peft_config[name].target_modules = modules


def save_base_reference(model, ref: BaseReference, out: Path) -> dict:
    """The manifest's ``base`` entry; ``out`` gets the base's config (its vocabulary size as resized) and
    the policy tokens' embedding rows, all that differs from the referenced files."""
    base = model.llm.get_base_model()
    out.mkdir(parents=True)
    base.config.save_pretrained(out)
    end = len(model.tokenizer)
    rows = {"embed_tokens": base.get_input_embeddings().weight[ref.first_added:end]}
    if not base.config.tie_word_embeddings:
        rows["lm_head"] = base.get_output_embeddings().weight[ref.first_added:end]
    save_file({k: v.detach().contiguous().cpu() for k, v in rows.items()}, str(out / ADDED_ROWS))
    return {"path": ref.path, "files": ref.hashes(), "added_rows": [ref.first_added, end]}


def save_checkpoint(model, out_dir: str | Path, lineage: dict | None = None, metrics: dict | None = None,
                    self_contained: bool = False) -> Path:
    """Write atomically: build in a temp dir beside ``out_dir``, then rename over it. A model built on a
    pretrained base (``model.base_source``) references it unless ``self_contained``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        llm = model.llm
        active = llm.active_adapter
        ref = getattr(model, "base_source", None)
        if ref is not None and not self_contained:
            base_entry = save_base_reference(model, ref, tmp / "base")
        else:
            base_entry = None
            save_base_llm(llm.get_base_model(), tmp / "base")
        with _portable_adapter_configs(llm):
            llm.save_pretrained(tmp / "adapters", safe_serialization=True)  # one folder per adapter
        (tmp / "adapters" / "README.md").unlink(missing_ok=True)  # peft's model card: only the local base path
        # peft writes the default-named adapter at the root; ours are all named, so move any stray files.
        for name in llm.peft_config:
            sub = tmp / "adapters" / name
            if not sub.exists():
                sub.mkdir()
                for f in (tmp / "adapters").iterdir():
                    if f.is_file():
                        f.rename(sub / f.name)
        llm.set_adapter(active)
        save_file(module_state(model), str(tmp / "modules.safetensors"))
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        version = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_version": version,
            "versions": _versions(),
            "config": model.cfg.to_dict(),
            "vocabulary": model.vocab.to_dict(),
            "trajectory": model.spec.to_dict(),
            "adapters": sorted(llm.peft_config),
            "lineage": lineage or {},
            "metrics": metrics or {},
            "files": files,
        }
        if base_entry is not None:
            manifest["base"] = base_entry
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_manifest(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {MANIFEST}; not a vla_driver checkpoint")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None


def checkpoint_rig(ckpt_dir: str | Path) -> CameraRig | None:
    """The cameras a checkpoint drives from, from its manifest alone (None: the top-down view)."""
    rig = read_manifest(ckpt_dir)["config"].get("rig")
    return CameraRig.from_dict(rig) if rig else None


def verify_checkpoint(ckpt_dir: str | Path) -> dict:
    """Check the manifest's hashes and refuse pickle files. Returns the manifest."""
    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir)
    for p in ckpt_dir.rglob("*"):
        if p.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(f"{p}: pickle-based weight files are refused; use safetensors")
    _verify_hashes(ckpt_dir, manifest.get("files", {}), "the manifest", "file changed or corrupted")
    if "base" in manifest:
        root = base_root(ckpt_dir, manifest["base"])
        if not root.is_dir():
            raise CheckpointError(f"{root}: the pretrained base this checkpoint references is not there "
                                  "(copy it to that path, or use a self-contained checkpoint)")
        _verify_hashes(root, manifest["base"]["files"], "the referenced base",
                       "not the referenced base: a different or changed model")
    return manifest


def _verify_hashes(root: Path, files: dict, listed_in: str, why: str) -> None:
    """Each file of ``files`` (relative path -> sha256) is under ``root`` with that hash."""
    for rel, digest in files.items():
        path = root / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {listed_in} but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise CheckpointError(f"{path}: sha256 {actual[:16]}.. does not match {listed_in}'s {digest[:16]}.. "
                                  f"({why})")


def base_root(ckpt_dir: Path, entry: dict) -> Path:
    """Where a referenced base is read from: ``<ckpt>/base/pretrained`` when a copy was placed there (a
    checkpoint shipped to a machine without the original path), else the path it was built from. Either
    is verified against the same hashes."""
    local = Path(ckpt_dir) / "base" / PLACED_BASE
    return local if local.is_dir() else Path(entry["path"])


def _load_referenced_base(ckpt_dir: Path, entry: dict):
    """The referenced pretrained base with the checkpoint's vocabulary size and added rows."""
    base = AutoModelForCausalLM.from_pretrained(base_root(ckpt_dir, entry), local_files_only=True,
                                                dtype=torch.float32, use_safetensors=True)
    vocab_rows = json.loads((ckpt_dir / "base" / "config.json").read_text())["vocab_size"]
    if base.get_input_embeddings().num_embeddings < vocab_rows:
        base.resize_token_embeddings(vocab_rows, mean_resizing=False)
    first, end = entry["added_rows"]
    rows = load_file(str(ckpt_dir / "base" / ADDED_ROWS))
    with torch.no_grad():
        base.get_input_embeddings().weight[first:end] = rows["embed_tokens"]
        if "lm_head" in rows:
            base.get_output_embeddings().weight[first:end] = rows["lm_head"]
    return base


def load_checkpoint(ckpt_dir: str | Path, device: str = "cpu", verified: dict | None = None):
    """Verify, then rebuild the model from its own files (no hub access, no pickle). ``verified``: the
    manifest ``verify_checkpoint`` just returned for this directory, so its files (a referenced 1 GB base
    among them) are not hashed a second time."""
    ckpt_dir = Path(ckpt_dir)
    manifest = verified if verified is not None else verify_checkpoint(ckpt_dir)
    cfg = VLAConfig.from_dict(manifest["config"])
    vocab = DecisionVocabulary.from_dict(manifest["vocabulary"])
    tokenizer = load_tokenizer(ckpt_dir / "tokenizer")
    if "base" in manifest:
        base = _load_referenced_base(ckpt_dir, manifest["base"])
    else:
        base = AutoModelForCausalLM.from_pretrained(ckpt_dir / "base", local_files_only=True, dtype=torch.float32,
                                                    use_safetensors=True)
    llm = PeftModel.from_pretrained(base, str(ckpt_dir / "adapters" / DECISION), adapter_name=DECISION)
    llm.load_adapter(str(ckpt_dir / "adapters" / ACTION), adapter_name=ACTION)
    llm.set_adapter(DECISION)
    model = VLAModel(cfg, llm, tokenizer, vocab)
    state = load_file(str(ckpt_dir / "modules.safetensors"))
    for name in MODULES:
        prefix = f"{name}."
        getattr(model, name).load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    if hasattr(model, "view_embed"):
        if VIEW_EMBED in state:
            with torch.no_grad():
                model.view_embed.copy_(state[VIEW_EMBED])
        else:  # saved before view embeddings were (2026-12-07): they load as the zeros those models drove with
            log.info("%s: no view embeddings saved; they start at zero", ckpt_dir)
    if "base" in manifest:
        entry = manifest["base"]  # a fine-tune records the base these adapters were trained on, as verified
        model.base_source = BaseReference(entry["path"], entry["added_rows"][0], dict(entry["files"]))
    model.model_version = manifest["model_version"]
    model.manifest = manifest
    return model.to(device).eval()
