"""Episode pictures: camera frames with the planned trajectory and the decision drawn on them (PIL only).

Frames come from :func:`vla_driver.sim.closed_loop.run_episode` (``record_frames=True``): dicts with
``image`` (H, W, 3), ``trajectory`` (N, 3, ego frame at that frame), ``decision``, ``navigation``,
``time`` and ``speed``. The camera is ego-aligned, so ego-frame points map to pixels with
:func:`vla_driver.sim.topdown.ego_to_pixel`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .topdown import ego_to_pixel

TRAJECTORY_COLOR = (255, 60, 60)
TEXT_COLOR = (255, 255, 255)


def annotate(frame: dict, scale: int = 2):
    """One frame as a PIL image, upscaled by ``scale``, with trajectory and text overlaid."""
    image = np.asarray(frame["image"], dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame image must be (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    pil = Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    traj = frame.get("trajectory")
    if traj is not None and np.all(np.isfinite(traj)):
        pts = ego_to_pixel(np.vstack([[0.0, 0.0], np.asarray(traj)[:, :2]]), (h, w)) * scale
        draw.line([tuple(p) for p in pts], fill=TRAJECTORY_COLOR, width=max(1, scale))
        r = 1.5 * scale
        for x, y in pts[1:]:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=TRAJECTORY_COLOR)
    lines = [f"t={frame.get('time', 0.0):4.1f}s  v={frame.get('speed', 0.0):4.1f}m/s  {frame.get('decision', '')}",
             str(frame.get("navigation", ""))]
    for i, line in enumerate(lines):
        draw.text((4, 2 + 11 * i), line, fill=TEXT_COLOR)
    return pil


def save_episode_gif(frames: list[dict], path, fps: float = 10.0, every: int = 1, scale: int = 2) -> Path:
    """Animated GIF of the episode (every ``every``-th frame)."""
    if not frames:
        raise ValueError("no frames to save; run the episode with record_frames=True")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [annotate(f, scale) for f in frames[::max(1, int(every))]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 * max(1, every) / fps), loop=0)
    return path


def save_episode_png(frames: list[dict], path, count: int = 6, scale: int = 1) -> Path:
    """A contact sheet of ``count`` evenly spaced frames stacked vertically (one frame -> one picture)."""
    if not frames:
        raise ValueError("no frames to save; run the episode with record_frames=True")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    images = [annotate(frames[i], scale) for i in picks]
    sheet = Image.new("RGB", (images[0].width, sum(im.height for im in images)))
    y = 0
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height
    sheet.save(path)
    return path
