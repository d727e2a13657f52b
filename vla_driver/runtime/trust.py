"""Signatures over what is made from a checkpoint: its ONNX graphs (``onnx*/graphs.json``) and TensorRT engines
(``engines/*.manifest.json``). Each of those manifests holds its files' sha256, checked at load; signing the
manifest says who made them. A node with ``trusted_keys`` runs graphs or engines only when their manifests
carry a trusted signature; otherwise it drives on the signed checkpoint through torch, and says why.
"""
from __future__ import annotations

from pathlib import Path

from ..model.checkpoint import CheckpointError
from ..model.signing import sign_checkpoint, sign_document, verify_document_signature
from .engine_cache import MANIFEST_SUFFIX, read_manifest, verify_file_hash
from .export import SPEC_FILE
from .graph_spec import load_graph_specs

ENGINE_DIR = "engines"


def graph_manifests(ckpt_dir: Path) -> list[Path]:
    """``onnx/graphs.json`` and its siblings (``onnx-int8``, ...)."""
    return sorted(Path(ckpt_dir).glob(f"onnx*/{SPEC_FILE}"))


def engine_manifests(ckpt_dir: Path) -> list[Path]:
    return sorted((Path(ckpt_dir) / ENGINE_DIR).glob(f"*{MANIFEST_SUFFIX}"))


def sign_with_artifacts(ckpt_dir: str | Path, private_key_path: str | Path) -> tuple[str, list[Path]]:
    """Sign the checkpoint and every graph and engine manifest beside it, each after checking the files it
    names (a signature vouches for what is on disk); the key id and the manifests signed."""
    ckpt_dir = Path(ckpt_dir)
    kid = sign_checkpoint(ckpt_dir, private_key_path)
    signed = []
    for spec_file in graph_manifests(ckpt_dir):
        _check_graph_files(spec_file)
        sign_document(spec_file, private_key_path)
        signed.append(spec_file)
    for manifest in engine_manifests(ckpt_dir):
        _check_engine_file(manifest)
        sign_document(manifest, private_key_path)
        signed.append(manifest)
    return kid, signed


def untrusted_graphs(ckpt_dir: Path, trusted: dict) -> str:
    """Why the graphs in ``<ckpt>/onnx`` may not run under ``trusted`` keys ('' when they may)."""
    try:
        verify_document_signature(Path(ckpt_dir) / "onnx" / SPEC_FILE, trusted)
    except (CheckpointError, OSError) as err:
        return f"ONNX graphs refused: {err}"
    return ""


def untrusted_engines(ckpt_dir: Path, trusted: dict) -> str:
    """Why the engines in ``<ckpt>/engines`` may not run under ``trusted`` keys ('' when they may)."""
    for manifest in engine_manifests(ckpt_dir):
        try:
            verify_document_signature(manifest, trusted)
        except (CheckpointError, OSError) as err:
            return f"TensorRT engines refused: {err}"
    return ""


def _check_graph_files(spec_file: Path) -> None:
    """Every file the graphs name has its recorded sha256 (the shared weights file hashed once)."""
    graph_dir, files = spec_file.parent, {}
    for spec in load_graph_specs(spec_file):
        files[spec.onnx_path(graph_dir)] = spec.onnx_sha256
        files.update(spec.beside_files(graph_dir))
    for path, digest in files.items():
        if digest:
            verify_file_hash(path, digest)


def _check_engine_file(manifest_file: Path) -> None:
    engine = manifest_file.with_name(manifest_file.name.removesuffix(MANIFEST_SUFFIX))
    verify_file_hash(engine, str(read_manifest(engine).get("engine_sha256", "")))
