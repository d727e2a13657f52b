"""The SFT dataset's files: one ``.npz`` shard per episode plus ``meta.json``. Reading them needs numpy
alone, so training processes do not load the simulator that wrote them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.vocabulary import DecisionVocabulary


def write_shard(path: Path, samples: list[dict], vocab: DecisionVocabulary, seed: int, scenario: str) -> None:
    """One episode's samples as a compressed ``.npz`` of plain arrays (fixed-width strings, no pickles)."""
    def text(values):
        width = max(1, max(len(v) for v in values))
        return np.array(values, dtype=f"<U{width}")

    np.savez_compressed(
        path,
        image=np.stack([s["image"] for s in samples]).astype(np.uint8),
        ego=np.array([[s["speed"], s["accel"], s["yaw_rate"]] for s in samples], dtype=np.float32),
        navigation=text([s["navigation"] for s in samples]),
        speed=text([s["decision"].speed for s in samples]),
        path=text([s["decision"].path for s in samples]),
        decision_index=np.array([vocab.candidate_index(s["decision"].speed, s["decision"].path) for s in samples],
                                dtype=np.int16),
        reasoning=text([s["decision"].reasoning for s in samples]),
        future=np.stack([s["future"] for s in samples]).astype(np.float32),
        scenario=text([scenario] * len(samples)),
        seed=np.full(len(samples), seed, dtype=np.int64),
        time=np.array([s["time"] for s in samples], dtype=np.float32),
        recovering=np.array([s["recovering"] for s in samples], dtype=bool),
    )


def load_dataset(directory) -> dict:
    """All shards of a recorded dataset concatenated: dict of arrays (plus ``meta``), no pickles."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} has no meta.json; is it a dataset written by record_expert_dataset?")
    meta = json.loads(meta_path.read_text())
    parts: dict[str, list] = {}
    for name in meta["shards"]:
        with np.load(directory / name, allow_pickle=False) as shard:
            for key in shard.files:
                parts.setdefault(key, []).append(shard[key])
    if not parts:
        raise ValueError(f"{directory} holds no samples")
    data = {key: np.concatenate(values) for key, values in parts.items()}
    data["meta"] = meta
    return data
