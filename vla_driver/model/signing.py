"""Signed checkpoints: an ed25519 signature over the manifest, which holds the sha256 of every file.

The manifest's hashes already catch a changed file; the signature says who wrote the manifest. A node
given ``trusted_keys`` loads only a checkpoint whose ``manifest.sig`` holds a valid signature by one of
them: a tampered file fails its hash, a tampered manifest its signature, another key's signature the trust.

Keys are files: the private key as unencrypted PKCS8 PEM (mode 0600, kept off the car), the public key
next to it as ``<key>.pub`` (OpenSSH one-line format, so ``ssh-keygen -t ed25519`` keys work as well).
``manifest.sig`` is JSON: one entry per signer (key id = sha256 of the raw public key, first 16 hex),
so a checkpoint can carry the old and the new key's signature through a key rotation.

What is made from a checkpoint (ONNX graphs, TensorRT engines) has manifests of its own (``graphs.json``,
``*.engine.manifest.json``) holding its files' hashes; those are signed the same way, beside them as
``<manifest>.sig`` (:func:`sign_document`), so that nobody who can write the folder swaps the graphs.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .checkpoint import MANIFEST, CheckpointError, verify_checkpoint

SIGNATURE_FILE = "manifest.sig"
PUBLIC_SUFFIX = ".pub"
MAX_KEY_FILE_BYTES = 16 << 10  # a key file is a few hundred bytes: anything larger is not one


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """A new ed25519 key pair: ``path`` (private, 0600) and ``path.pub``; refuses to overwrite either."""
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + PUBLIC_SUFFIX)
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} exists; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_private_key(private_path, key)
    public_path.write_bytes(_public_line(key.public_key()))
    return private_path, public_path


def write_private_key(path: Path, key) -> None:
    """A private key as unencrypted PKCS8 PEM, readable by its owner only, never over an existing file."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_checkpoint(ckpt_dir: str | Path, private_key_path: str | Path) -> str:
    """Add (or renew) this key's signature of the manifest; returns the key id. The files are checked
    against the manifest first: a signature vouches for what is on disk, not for a broken checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    verify_checkpoint(ckpt_dir)
    return _sign(ckpt_dir / MANIFEST, ckpt_dir / SIGNATURE_FILE, load_private_key(Path(private_key_path)))


def sign_document(document: str | Path, private_key_path: str | Path) -> str:
    """Sign another manifest (graphs', an engine's) into ``<document>.sig``; the caller checked its files."""
    document = Path(document)
    return _sign(document, _signature_of(document), load_private_key(Path(private_key_path)))


def _signature_of(document: Path) -> Path:
    return document.with_name(document.name + ".sig")


def _sign(document: Path, signature_file: Path, key: Ed25519PrivateKey) -> str:
    kid = key_id(key.public_key())
    signatures = [s for s in _read_signatures(signature_file, missing_ok=True) if s.get("key_id") != kid]
    signature = key.sign(document.read_bytes())
    signatures.append({"key_id": kid, "algorithm": "ed25519", "signature": base64.b64encode(signature).decode()})
    tmp = signature_file.with_name(signature_file.name + ".tmp")
    tmp.write_text(json.dumps({"signatures": signatures}, indent=2) + "\n")
    os.replace(tmp, signature_file)
    return kid


def load_trusted_keys(spec: str | Path | list) -> dict[str, Ed25519PublicKey]:
    """``{key id: key}`` from public key files and directories of ``*.pub`` files (a comma-separated
    string, as the nodes' ``trusted_keys`` parameter gives them, or a list). An unreadable key is an error:
    a trust list that silently shrank would refuse every checkpoint, or worse, never be noticed."""
    entries = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in filter(None, entries):
        path = Path(entry)
        if path.is_dir():
            files = sorted(path.glob(f"*{PUBLIC_SUFFIX}"))
            if not files:
                raise CheckpointError(f"trusted keys: no *{PUBLIC_SUFFIX} file in {path}")
        elif path.is_file():
            files = [path]
        else:
            raise CheckpointError(f"trusted keys: {path} does not exist")
        for f in files:
            key = _load_public_key(f)
            keys[key_id(key)] = key
    return keys


def verify_signature(ckpt_dir: str | Path, trusted: dict[str, Ed25519PublicKey]) -> str:
    """The id of the trusted key whose signature of the manifest holds; CheckpointError saying why not
    (unsigned, signed only by keys not trusted here, or a signature that does not match the manifest)."""
    ckpt_dir = Path(ckpt_dir)
    return _verify(ckpt_dir / MANIFEST, ckpt_dir / SIGNATURE_FILE, trusted, str(ckpt_dir))


def verify_document_signature(document: str | Path, trusted: dict[str, Ed25519PublicKey]) -> str:
    """:func:`verify_signature` for a manifest signed by :func:`sign_document`."""
    document = Path(document)
    return _verify(document, _signature_of(document), trusted, str(document))


def _verify(document: Path, signature_file: Path, trusted: dict[str, Ed25519PublicKey], name: str) -> str:
    if not trusted:
        raise CheckpointError("no trusted keys given")
    signatures = _read_signatures(signature_file, missing_ok=False)
    manifest = document.read_bytes()
    signers = [s.get("key_id") for s in signatures]
    for entry in signatures:
        key = trusted.get(entry.get("key_id"))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(entry.get("signature", ""), validate=True), manifest)
        except (InvalidSignature, ValueError):
            raise CheckpointError(f"{name}: the signature by key {entry['key_id']} does not match the "
                                  "manifest (manifest changed after signing)") from None
        return entry["key_id"]
    raise CheckpointError(f"{name}: signed by {', '.join(map(str, signers)) or 'no key'}, none of them "
                          f"trusted here ({', '.join(sorted(trusted))})")


def _read_signatures(path: Path, missing_ok: bool) -> list[dict]:
    if not path.is_file():
        if missing_ok:
            return []
        raise CheckpointError(f"{path.parent}: unsigned (no {path.name}); sign it with `vla-driver sign`")
    try:
        data = json.loads(path.read_text())
        signatures = data["signatures"]
        if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
            raise TypeError("signatures is not a list of objects")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable signature file ({e})") from None
    return signatures


def _read_key_file(path: Path) -> bytes:
    if path.stat().st_size > MAX_KEY_FILE_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes is no key file")
    return path.read_bytes()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such key file (make one with `vla-driver keygen {path}`)")
    return _parse_key(path, lambda data: serialization.load_pem_private_key(data, password=None),
                      Ed25519PrivateKey, "an unencrypted PEM private key")


def _load_public_key(path: Path) -> Ed25519PublicKey:
    def parse(data: bytes):
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_public_key(data)
        return serialization.load_ssh_public_key(data.strip())

    return _parse_key(path, parse, Ed25519PublicKey, "a public key")


def _parse_key(path: Path, parse, expected: type, what: str):
    """One key file as an ed25519 key, or a CheckpointError saying what the file is instead."""
    try:
        key = parse(_read_key_file(path))
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CheckpointError(f"{path}: not {what} ({e})") from None
    if not isinstance(key, expected):
        raise CheckpointError(f"{path}: a {type(key).__name__}, not an ed25519 key")
    return key


def _public_line(key: Ed25519PublicKey) -> bytes:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + f" vla-driver-{key_id(key)}\n".encode()
