"""Camera rigs: which perspective cameras a car carries, their pinhole geometry, and the model's input size.

A rig is part of a checkpoint's contract (it is stored in the manifest): the same numbers place the
simulator's cameras, fill the CameraInfo messages, and bring a native frame to the model's input size.
Pure numpy + pyyaml so that nodes, tools and training share it without rclpy, torch or a renderer.

Frames. The ego frame is x forward, y left, z up (metres, origin at the car's centre on the ground). A
mount is a position in that frame plus yaw (positive to the left) and pitch (positive = looking down).
Projection uses the ROS optical frame (z forward, x right, y down) and a pinhole K with cx = W/2,
cy = H/2 as CARLA's bridge fills it for its symmetric frustum. Pixel coordinates are continuous: pixel
(col, row) covers [col, col + 1) x [row, row + 1), so ``floor`` gives the index and resizing by s is
multiplying by s; that keeps K exact through every resize and crop below.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

RESIZE_MODES = ("letterbox", "crop")
PRESET_DIR = Path(__file__).resolve().parents[2] / "config" / "rigs"  # source checkout / editable install
_NAME = re.compile(r"^[a-z0-9_]+$")
# Optical axes (x right, y down, z forward) as columns in the camera body frame (x forward, y left, z up).
_BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{kind} name must match [a-z0-9_]+, got {name!r}")


def _check_size(kind: str, height: int, width: int) -> None:
    for label, v in (("height", height), ("width", width)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or not 16 <= v <= 4096:
            raise ValueError(f"{kind} {label} must be an integer in 16..4096, got {v!r}")


def mount_rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Rotation ego <- camera body (x forward, y left, z up): yaw about z, then pitch down about y."""
    cy, sy = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    cp, sp = math.cos(math.radians(pitch_deg)), math.sin(math.radians(pitch_deg))
    yaw = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    pitch = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])  # +pitch tips the forward axis down
    return yaw @ pitch


def pinhole_project(points_cam: np.ndarray, K: np.ndarray, min_depth: float = 1e-3):
    """Optical-frame points (N, 3) -> (pixels (N, 2), in_front (N,)); pixels behind the camera are NaN."""
    pts = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    in_front = pts[:, 2] > min_depth
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = pts @ K.T
        pixels = uvw[:, :2] / uvw[:, 2:3]
    pixels[~in_front] = np.nan
    return pixels, in_front


def camera_topic(name: str, stream: str = "image_raw") -> str:
    """A rig camera's topic, relative to the node (``camera/<name>/<stream>``); logs record it under ``/``."""
    return f"camera/{name}/{stream}"


def rig_label(rig: CameraRig | dict | None) -> str:
    """How messages name a model's cameras: ``the front rig``, or ``the top-down view`` without a rig."""
    if rig is None:
        return "the top-down view"
    return f"the {rig['name'] if isinstance(rig, dict) else rig.name} rig"


def camera_info_fields(K: np.ndarray, width: int, height: int) -> dict:
    """The fields of a sensor_msgs/CameraInfo for a pinhole image (plumb_bob, no distortion), row-major."""
    return {"width": int(width), "height": int(height), "distortion_model": "plumb_bob", "d": [0.0] * 5,
            "k": np.asarray(K, dtype=np.float64).ravel().tolist(), "r": np.eye(3).ravel().tolist(),
            "p": np.hstack([K, np.zeros((3, 1))]).ravel().tolist()}


@dataclass(frozen=True)
class CameraSpec:
    """One perspective camera: native image size, horizontal FOV and its mount on the car."""

    name: str
    width: int
    height: int
    hfov_deg: float
    x: float = 0.0
    y: float = 0.0
    z: float = 1.5
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0

    def __post_init__(self):
        _check_name("camera", self.name)
        _check_size("camera", self.height, self.width)
        if not 10.0 <= float(self.hfov_deg) <= 170.0:
            raise ValueError(f"camera {self.name}: hfov_deg must be in 10..170, got {self.hfov_deg}")
        for label in ("x", "y", "z", "yaw_deg", "pitch_deg"):
            if not math.isfinite(float(getattr(self, label))):
                raise ValueError(f"camera {self.name}: {label} must be finite")
        if not -90.0 < float(self.pitch_deg) < 90.0:
            raise ValueError(f"camera {self.name}: pitch_deg must be in (-90, 90), got {self.pitch_deg}")

    @property
    def fx(self) -> float:
        return (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)

    @property
    def fy(self) -> float:
        return self.fx  # square pixels

    @property
    def vfov_deg(self) -> float:
        return math.degrees(2 * math.atan((self.height / 2) / self.fy))

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.width / 2], [0.0, self.fy, self.height / 2], [0.0, 0.0, 1.0]])

    def camera_info(self) -> dict:
        """The fields of a sensor_msgs/CameraInfo (plumb_bob, no distortion), flattened row-major."""
        return camera_info_fields(self.K, self.width, self.height)

    def ego_from_optical(self) -> np.ndarray:
        """4x4 transform of the optical frame (z forward, x right, y down) into the ego frame."""
        T = np.eye(4)
        T[:3, :3] = mount_rotation(self.yaw_deg, self.pitch_deg) @ _BODY_FROM_OPTICAL
        T[:3, 3] = (self.x, self.y, self.z)
        return T

    def project(self, points_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ego-frame points (N, 3) -> (pixels (N, 2) as (col, row), in_front (N,) bool mask)."""
        T = self.ego_from_optical()
        pts = np.asarray(points_ego, dtype=np.float64).reshape(-1, 3)
        return pinhole_project((pts - T[:3, 3]) @ T[:3, :3], self.K)


@dataclass(frozen=True)
class FitGeometry:
    """How a native frame lands in the model image: the source rectangle (continuous pixels) that is
    scaled into the destination rectangle; outside the destination the model image is black."""

    src_box: tuple[float, float, float, float]  # left, top, right, bottom in the native frame
    dst_box: tuple[int, int, int, int]  # left, top, width, height in the model image

    @property
    def scale(self) -> tuple[float, float]:
        left, top, right, bottom = self.src_box
        return self.dst_box[2] / (right - left), self.dst_box[3] / (bottom - top)

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """Native-frame pixels (N, 2) as (col, row) -> where they land in the model image."""
        left, top = self.src_box[:2]
        return (np.asarray(pixels, dtype=np.float64) - (left, top)) * self.scale + self.dst_box[:2]

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """K of the model image, given K of the native frame."""
        sx, sy = self.scale
        cx, cy = self.to_model(np.array([K[0, 2], K[1, 2]]))
        return np.array([[K[0, 0] * sx, 0.0, cx], [0.0, K[1, 1] * sy, cy], [0.0, 0.0, 1.0]])


def fit_geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str) -> FitGeometry:
    """Letterbox scales the whole frame to fit inside and centres it (black bars); crop scales it to cover
    and keeps the centre. Both keep the aspect ratio (up to rounding the letterbox to whole pixels)."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if mode == "letterbox":
        s = min(dw / sw, dh / sh)
        cw, ch = min(dw, max(1, round(sw * s))), min(dh, max(1, round(sh * s)))
        return FitGeometry((0.0, 0.0, float(sw), float(sh)), ((dw - cw) // 2, (dh - ch) // 2, cw, ch))
    if mode == "crop":
        s = max(dw / sw, dh / sh)
        w, h = min(sw, dw / s), min(sh, dh / s)  # min: no 900.0000000001 from rounding
        left, top = (sw - w) / 2, (sh - h) / 2
        return FitGeometry((left, top, left + w, top + h), (0, 0, dw, dh))
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")


@dataclass(frozen=True)
class CameraRig:
    """The cameras of one car and the size every camera image is brought to before the model sees it."""

    name: str
    cameras: tuple[CameraSpec, ...]
    model_height: int
    model_width: int
    resize: str = "letterbox"

    def __post_init__(self):
        _check_name("rig", self.name)
        _check_size("model input", self.model_height, self.model_width)
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if not self.cameras:
            raise ValueError(f"rig {self.name} has no cameras")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"rig {self.name}: camera names repeat: {names}")
        object.__setattr__(self, "cameras", tuple(self.cameras))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def camera(self, name: str) -> CameraSpec:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"rig {self.name} has no camera {name!r}; it has {list(self.names)}")

    def fit(self, camera: CameraSpec) -> FitGeometry:
        return fit_geometry((camera.height, camera.width), (self.model_height, self.model_width), self.resize)

    def model_K(self, camera: CameraSpec) -> np.ndarray:
        """Intrinsics of the camera's image at the model input size (CameraInfo for resized images)."""
        return self.fit(camera).intrinsics(camera.K)

    def blank_views(self, frames: int = 1) -> np.ndarray:
        """Black model inputs: every camera x ``frames`` views at the model's size (warm-ups, unrendered steps)."""
        return np.zeros((len(self.cameras) * frames, self.model_height, self.model_width, 3), np.uint8)

    def model_camera_info(self, camera: CameraSpec) -> dict:
        """The CameraInfo fields of the camera's image at the model input size."""
        return camera_info_fields(self.model_K(camera), self.model_width, self.model_height)

    def to_dict(self) -> dict:
        return {"name": self.name, "model_height": self.model_height, "model_width": self.model_width,
                "resize": self.resize, "cameras": [asdict(c) for c in self.cameras]}

    @classmethod
    def from_dict(cls, d: dict) -> CameraRig:
        d = dict(d)
        unknown = set(d) - {"name", "model_height", "model_width", "resize", "cameras"}
        if unknown:
            raise ValueError(f"unknown rig keys: {sorted(unknown)}")
        cameras = tuple(CameraSpec(**c) for c in d.pop("cameras", ()))
        return cls(cameras=cameras, **d)


def preset_dirs() -> list[Path]:
    """Where presets live: the source tree, then the installed share folders (pip's data_files under
    sys.prefix, colcon's under each AMENT_PREFIX_PATH entry)."""
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    return [PRESET_DIR, *(Path(p) / "share" / "vla_driver" / "config" / "rigs" for p in prefixes)]


def load_rig(name_or_path: str | Path) -> CameraRig:
    """A preset by name (``front``, ``front3``, ``surround6``) or any rig YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        _check_name("rig", str(name_or_path))
        found = [d / f"{name_or_path}.yaml" for d in preset_dirs() if (d / f"{name_or_path}.yaml").is_file()]
        if not found:
            known = sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.yaml")})
            raise FileNotFoundError(f"no camera rig preset {name_or_path!r}; presets: {known}")
        path = found[0]
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a rig file is a mapping")
    data.setdefault("name", path.stem)
    return CameraRig.from_dict(data)


def rig_from_param(value: str) -> CameraRig | None:
    """A node's ``rig`` parameter: empty for none, a preset name, a rig YAML file, or the rig itself as JSON
    (``rig_param``: how a harness hands a node a rig that is no preset without writing a file)."""
    if not value:
        return None
    if value.lstrip().startswith("{"):
        return CameraRig.from_dict(json.loads(value))
    return load_rig(value)


def rig_param(rig: CameraRig | None) -> str:
    """The ``rig`` parameter that gives a node ``rig``: its preset name when it is that preset, else its JSON."""
    if rig is None:
        return ""
    try:
        if load_rig(rig.name) == rig:
            return rig.name
    except (OSError, ValueError):
        pass
    return json.dumps(rig.to_dict())


def fit_to_model(image, rig: CameraRig) -> np.ndarray:
    """A native (H, W, 3) uint8 frame (or an RGB PIL image, as a camera message decodes to without a copy)
    -> (model_height, model_width, 3) uint8, aspect ratio kept (letterbox: black bars; crop: centre crop).
    The one place images are resized for the model; the pixel geometry is ``rig.fit`` and matches
    ``rig.model_K``. Downscaling first averages whole pixel blocks (``reducing_gap``): an 800x600 frame to
    128x96 in 0.6 ms instead of 1.3, within ~0.2 grey levels of a full bilinear filter on camera images.
    Pillow is imported only to resize, so a frame already at the model's size needs numpy alone (the GPU
    check runs where Pillow is not installed)."""
    if not isinstance(image, np.ndarray) and hasattr(image, "mode"):  # a PIL image
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        size = (image.height, image.width)
    else:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        size = image.shape[:2]
    geo = fit_geometry(size, (rig.model_height, rig.model_width), rig.resize)
    x0, y0, w, h = geo.dst_box
    if geo.src_box == (0.0, 0.0, float(size[1]), float(size[0])) and (h, w) == size:
        scaled = np.asarray(image)
    else:
        from PIL import Image

        pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
        scaled = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR, box=geo.src_box, reducing_gap=2.0))
    if (w, h) == (rig.model_width, rig.model_height):
        return np.ascontiguousarray(scaled)
    out = np.zeros((rig.model_height, rig.model_width, 3), dtype=np.uint8)
    out[y0:y0 + h, x0:x0 + w] = scaled
    return out
