"""Calibration data for INT8 engines: camera frames -> graph inputs -> batches at the profile's opt shape.

TensorRT calibrates at the calibration profile's opt shapes, so every batch has exactly those shapes (axis 0
of every input is the batch axis; a last partial batch is dropped). Frames come from a directory of ``.npz``
/ ``.png`` / ``.jpg`` files (sorted by name), from a callable such as a simulator returning one frame per call
(``None`` when done), or from any iterable. What a frame means to the model is the ``preprocess`` callback's
business: ``preprocess(frame) -> {input name: array without the batch axis}``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from .graph_spec import GraphSpec

log = logging.getLogger(__name__)

Frame = dict[str, np.ndarray]
Preprocess = Callable[[Frame], Mapping[str, np.ndarray]]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FRAME_SUFFIXES = (".npz", *IMAGE_SUFFIXES)


def read_frame_file(path: str | Path) -> Frame:
    """An ``.npz`` gives all its arrays by name; an image gives ``{"image": (H, W, 3) uint8 RGB}``."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    with Image.open(path) as img:
        return {"image": np.asarray(img.convert("RGB"))}


def _as_frame(item) -> Frame:
    if isinstance(item, np.ndarray):
        return {"image": item}
    if isinstance(item, Mapping):
        return {str(k): np.asarray(v) for k, v in item.items()}
    raise TypeError(f"a frame must be an image array or a mapping of arrays, got {type(item).__name__}")


def _frames_from_dir(directory: Path) -> Iterator[Frame]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no calibration frames ({', '.join(FRAME_SUFFIXES)}) in {directory}")
    for path in files:
        try:
            yield read_frame_file(path)
        except (OSError, ValueError) as exc:  # truncated or foreign files: skip, calibration is statistical
            log.warning("skipping unreadable calibration frame %s: %s", path, exc)


def _until_none(produce: Callable[[], object]) -> Iterator[object]:
    while (item := produce()) is not None:
        yield item


def iter_frames(source: str | Path | Callable[[], object] | Iterable, limit: int | None = None) -> Iterator[Frame]:
    """Frames from a directory, a callable (called until it returns None) or an iterable; at most ``limit``."""
    if isinstance(source, str | Path):
        directory = Path(source)
        if not directory.is_dir():
            raise NotADirectoryError(f"calibration frame directory not found: {directory}")
        items: Iterable = _frames_from_dir(directory)
    elif callable(source):
        items = _until_none(source)
    else:
        items = source
    for count, item in enumerate(items):
        if limit is not None and count >= limit:
            return
        yield _as_frame(item)


def passthrough_preprocess(spec: GraphSpec) -> Preprocess:
    """For frames already holding the graph's inputs by name (e.g. ``.npz`` samples saved at export)."""

    def preprocess(frame: Frame) -> dict[str, np.ndarray]:
        missing = [n for n in spec.inputs if n not in frame]
        if missing:
            raise ValueError(f"graph {spec.name!r} needs inputs {list(spec.inputs)}; this frame has {sorted(frame)} "
                             f"(missing {missing}). Save .npz samples keyed by input name, or pass a model "
                             "preprocess (--calib-preprocess module:factory)")
        return {n: frame[n] for n in spec.inputs}

    return preprocess


def calibration_batches(frames: Iterable[Frame], preprocess: Preprocess, spec: GraphSpec,
                        max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stack preprocessed frames into batches with the spec's opt shapes and dtypes."""
    shapes = spec.input_shapes("opt")
    batch_sizes = {shape[0] for shape in shapes.values() if shape}
    if len(batch_sizes) != 1:
        raise ValueError(f"graph {spec.name!r}: inputs disagree on the batch size at opt ({shapes})")
    batch_size = batch_sizes.pop()
    if batch_size < 1:
        raise ValueError(f"graph {spec.name!r}: opt batch size is {batch_size}")
    pending: dict[str, list[np.ndarray]] = {name: [] for name in shapes}
    produced = 0
    if max_batches is not None and max_batches <= 0:
        return
    for frame in frames:
        sample = preprocess(frame)
        for name, shape in shapes.items():
            if name not in sample:
                raise ValueError(f"preprocess gave {sorted(sample)}, graph {spec.name!r} needs input {name!r}")
            value = np.asarray(sample[name], dtype=spec.inputs[name].dtype)
            if value.shape != shape[1:]:
                raise ValueError(f"preprocess gave input {name!r} shape {list(value.shape)}; graph {spec.name!r} "
                                 f"calibrates at {list(shape[1:])} per sample (opt shape {list(shape)})")
            pending[name].append(value)
        if len(pending[next(iter(pending))]) == batch_size:
            yield {name: np.stack(values) for name, values in pending.items()}
            pending = {name: [] for name in shapes}
            produced += 1
            if max_batches is not None and produced >= max_batches:
                return
