"""Episode pictures: what the car saw, the trajectory it planned, its decision and its speed (PIL only).

Two kinds of frame dicts, both with ``trajectory`` (N, 3: x, y, heading in the ego frame at that frame),
``decision``, ``navigation``, ``time`` and ``speed`` (m/s, the car's real speed):

- top-down only (:func:`vla_driver.sim.closed_loop.run_episode` with ``record_frames=True``): ``image`` is
  the ego-aligned top-down view; the trajectory is drawn with :func:`vla_driver.sim.topdown.ego_to_pixel`.
- with a camera (the demo, :func:`vla_driver.harness.demo.frame_dicts`): also ``front`` (H, W, 3), the
  front camera's image, ``front_camera`` (its :class:`CameraSpec`), ``front_fit`` (the
  :class:`FitGeometry` that brought the native frame to this image, None when it is the native frame),
  ``front_caption`` and ``cameras`` ({name: image} of a rig's other cameras). One panel then shows the
  front camera with the trajectory projected onto the road (z = 0 through ``CameraSpec.project``), the
  top-down view with the trajectory beside it, and a text bar with time, speed and decision.

:class:`PictureRecorder` captures, per simulator cycle, what such a panel needs.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.camera_rig import CameraRig, CameraSpec, FitGeometry, load_rig
from .camera_render import CameraRenderer
from .topdown import ego_to_pixel

TRAJECTORY_COLOR = (255, 60, 60)  # top-down-only pictures
PLAN_COLOR = (255, 0, 255)  # panels: magenta, unlike any road, sky, verge or vehicle colour of the renderer
FOV_COLOR = (255, 220, 80)
TEXT_COLOR = (255, 255, 255)
BAR_COLOR = (24, 24, 24)
DISPLAY_SIZE = (300, 400)  # (H, W) of the display-only front camera for policies without a rig
FRONT_HEIGHT = 300  # the front camera is shown at this height
TOPDOWN_SCALE = 2
GAP = 6
DENSIFY_M = 0.25  # the projected trajectory is sampled this finely so its line bends with perspective


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


# ---------------------------------------------------------------------------------------------- cameras
def display_rig(size: tuple[int, int] = DISPLAY_SIZE) -> CameraRig:
    """CARLA's ``rgb_front`` camera (the ``front`` preset's mount and field of view) at ``size`` (H, W):
    a camera for the picture only, for policies that drive from the top-down view."""
    front = load_rig("front")
    cam = replace(front.camera("front"), height=int(size[0]), width=int(size[1]))
    return replace(front, name="display_front", cameras=(cam,))


def front_camera(rig: CameraRig) -> CameraSpec:
    """The rig's camera named ``front``, else the one looking most nearly straight ahead."""
    if "front" in rig.names:
        return rig.camera("front")
    return min(rig.cameras, key=lambda c: abs(math.remainder(c.yaw_deg, 360.0)))


class PictureRecorder:
    """Per cycle, what a picture needs: the speed, the top-down view and a front camera image.

    With a rig (the policy's cameras): its front camera image as the model saw it, the other cameras'
    images and the top-down view rendered for the picture. Without one (the policy sees the top-down
    view): that view, and a front camera rendered for display only (:func:`display_rig`)."""

    def __init__(self, rig: CameraRig | None, display_size: tuple[int, int] = DISPLAY_SIZE):
        self.rig, self.display_size = rig, display_size
        self._renderer = None

    def capture(self, sim, obs, speed: float) -> dict:
        view = {"time": float(obs.stamp), "speed": float(speed), "navigation": obs.navigation, "cameras": {}}
        if self.rig is None:
            if self._renderer is None:
                self._renderer = CameraRenderer(display_rig(self.display_size))
            cam = self._renderer.rig.cameras[0]
            view.update(topdown=obs.image, front=self._renderer.render(sim.env.road, sim.vehicle)[cam.name],
                        front_camera=cam, front_fit=None,
                        front_caption="front camera (display only: this model sees the top-down view)")
        else:
            cam = front_camera(self.rig)
            k = self.rig.names.index(cam.name)
            view.update(topdown=sim.render_topdown(), front=obs.image[k], front_camera=cam,
                        front_fit=self.rig.fit(cam), front_caption=f"{cam.name} camera (model input)",
                        cameras={n: obs.image[i] for i, n in enumerate(self.rig.names) if i != k})
        return view

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


# ------------------------------------------------------------------------------------------- projection
def densify(xy: np.ndarray, step_m: float = DENSIFY_M) -> np.ndarray:
    """A polyline (N, 2) resampled so that consecutive points are at most ``step_m`` apart."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    out = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:], strict=True):
        n = max(1, int(math.ceil(np.linalg.norm(b - a) / step_m)))
        out.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.vstack(out)


def project_ground(xy_ego: np.ndarray, camera: CameraSpec, fit: FitGeometry | None = None):
    """Ground points (N, 2) in the ego frame -> (pixels (N, 2) as (col, row) in the image, in_front (N,)).

    ``fit``: the image is the native frame brought to the model size by it (``CameraRig.fit``)."""
    xy = np.asarray(xy_ego, dtype=np.float64).reshape(-1, 2)
    pixels, in_front = camera.project(np.column_stack([xy, np.zeros(len(xy))]))
    return (fit.to_model(pixels) if fit is not None else pixels), in_front


def trajectory_in_camera(traj: np.ndarray, camera: CameraSpec, fit: FitGeometry | None = None,
                         image_hw: tuple[int, int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """The path from the car (ego origin) through the waypoints, on the road (z = 0), in image pixels:
    (polylines of consecutive points in front of the camera, waypoint pixels (K, 2) in front of it).
    Points behind the camera are dropped, and so are points so close to its plane that they project
    far outside the image (``image_hw``: the image size, default the camera's)."""
    h, w = image_hw or (camera.height, camera.width)
    xy = np.asarray(traj, dtype=np.float64)[:, :2]
    pixels, ok = project_ground(densify(np.vstack([[0.0, 0.0], xy])), camera, fit)
    ok &= np.all(np.abs(pixels - (w / 2, h / 2)) < 10 * max(h, w), axis=1)
    lines, start = [], None
    for i, good in enumerate([*ok.tolist(), False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            if i - start >= 2:
                lines.append(pixels[start:i])
            start = None
    points, front = project_ground(xy, camera, fit)
    inside = front & np.all((points >= 0) & (points < (w, h)), axis=1)
    return lines, points[inside]


# ------------------------------------------------------------------------------------------------ panels
def _draw_topdown(image: np.ndarray, traj, scale: int, camera: CameraSpec | None = None,
                  color=TRAJECTORY_COLOR):
    h, w = image.shape[:2]
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    if camera is not None:  # the front camera's field of view, 40 m deep
        half = math.radians(camera.hfov_deg) / 2
        yaw = math.radians(camera.yaw_deg)
        tips = [(camera.x + 40 * math.cos(yaw + a), camera.y + 40 * math.sin(yaw + a)) for a in (half, -half)]
        pts = ego_to_pixel(np.array([tips[0], (camera.x, camera.y), tips[1]]), (h, w)) * scale
        draw.line([tuple(p) for p in pts], fill=FOV_COLOR, width=1)
    if traj is not None and np.all(np.isfinite(traj)):
        pts = ego_to_pixel(np.vstack([[0.0, 0.0], np.asarray(traj)[:, :2]]), (h, w)) * scale
        draw.line([tuple(p) for p in pts], fill=color, width=max(1, scale))
        r = 1.5 * scale
        for x, y in pts[1:]:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=color)
    return pil


def _speed_text(frame: dict) -> str:
    speed = frame.get("speed")
    if speed is None or not math.isfinite(float(speed)):
        return "v=? m/s (not recorded)"  # never a made-up 0.0
    return f"v={float(speed):.1f} m/s ({3.6 * float(speed):.0f} km/h)"


def front_view(frame: dict, height: int = FRONT_HEIGHT):
    """The front camera image shown ``height`` pixels high, with the planned trajectory on the road."""
    image = np.asarray(frame["front"], dtype=np.uint8)
    h, w = image.shape[:2]
    s = height / h
    pil = Image.fromarray(image).resize((round(w * s), height), Image.BILINEAR)
    traj = frame.get("trajectory")
    if traj is not None and np.all(np.isfinite(traj)):
        lines, points = trajectory_in_camera(traj, frame["front_camera"], frame.get("front_fit"), (h, w))
        draw = ImageDraw.Draw(pil)
        width = max(2, round(height / 100))
        for line in lines:  # continuous pixel coordinates: a pixel's centre is at index + 0.5
            draw.line([tuple(p) for p in line * s - 0.5], fill=PLAN_COLOR, width=width, joint="curve")
        r = 1.5 * width
        for x, y in points * s - 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=PLAN_COLOR, width=max(1, width // 2))
    return pil


def panel(frame: dict):
    """One frame with a camera: text bar on top, front camera | top-down view, other cameras below."""
    font, small = _font(15), _font(12)
    front = front_view(frame)
    topdown = _draw_topdown(frame["image"], frame.get("trajectory"), TOPDOWN_SCALE, frame.get("front_camera"),
                            PLAN_COLOR)
    others = list(frame.get("cameras", {}).items())
    bar, caption = 44, 16
    body = max(front.height, topdown.height) + caption
    strip = (max(im.shape[0] for _, im in others) + caption + GAP) if others else 0
    width = max(front.width + GAP + topdown.width, sum(im.shape[1] + GAP for _, im in others))
    sheet = Image.new("RGB", (width, bar + body + strip), BAR_COLOR)
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), f"t={frame.get('time', 0.0):5.1f} s   {_speed_text(frame)}   {frame.get('decision', '')}",
              fill=TEXT_COLOR, font=font)
    draw.text((6, 24), str(frame.get("navigation", "")), fill=TEXT_COLOR, font=small)
    sheet.paste(front, (0, bar))
    sheet.paste(topdown, (front.width + GAP, bar))
    y = bar + max(front.height, topdown.height)
    draw.text((4, y + 1), frame.get("front_caption", "front camera"), fill=TEXT_COLOR, font=small)
    draw.text((front.width + GAP + 4, y + 1), "top-down map (debug view, car faces right)", fill=TEXT_COLOR,
              font=small)
    x, y = 0, bar + body + GAP
    for name, image in others:
        sheet.paste(Image.fromarray(np.asarray(image, dtype=np.uint8)), (x, y))
        draw.text((x + 2, y + image.shape[0] + 1), name, fill=TEXT_COLOR, font=small)
        x += image.shape[1] + GAP
    return sheet


def annotate(frame: dict, scale: int = 2):
    """One frame as a PIL image: :func:`panel` when the frame has a front camera, else the top-down view
    upscaled by ``scale`` with the trajectory and text overlaid."""
    if frame.get("front") is not None:
        return panel(frame)
    image = np.asarray(frame["image"], dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame image must be (H, W, 3), got {image.shape}")
    pil = _draw_topdown(image, frame.get("trajectory"), scale)
    draw = ImageDraw.Draw(pil)
    lines = [f"t={frame.get('time', 0.0):4.1f}s  {_speed_text(frame)}  {frame.get('decision', '')}",
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
    sheet = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)))
    y = 0
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height
    sheet.save(path)
    return path
