"""A synchronised set of camera frames from a rig: the model sees every camera of one instant or nothing.

Approximate-time policy: each camera's newest frame is kept; a set is formed when the newest frames of all
cameras lie within ``slop_s`` of each other, stamped with the newest. A camera whose frame trails the
others by more than ``slop_s`` lags (the node says which); one that stops goes stale past the node's
``max_input_age_s`` and the node falls back as for a missing image. Without a rig there is one camera,
``image``, as the top-down models were trained. A rig's frames are held at the model's input size. A model
with a frame history gets each set with the earlier sets ``core.frame_history`` picks.
"""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

from vla_driver.core.camera_rig import CameraRig, fit_to_model
from vla_driver.core.camera_rig import camera_topic as rig_camera_topic
from vla_driver.core.frame_history import FrameHistory

from .convert import BadMessage, image_to_pil, image_to_rgb, stamp_to_seconds

LEGACY_CAMERA = "image"
# A frame stamped further ahead of the node's clock is refused: its age would read 0 until the clock caught up
# (an hour, for a camera clock an hour off), so a camera that then stopped would never go stale.
MAX_CLOCK_SKEW_S = 0.5
CAMERA_SET = "camera_set"  # the input age of a rig's newest synchronised set
# every camera name of the preset rigs: the launch files remap each (a node subscribes to its rig's only)
PRESET_CAMERAS = ("front", "front_left", "front_right", "back", "back_left", "back_right")


def camera_topic(name: str) -> str:
    """The topic a camera's frames arrive on (relative: launch files remap it to the car's camera)."""
    return LEGACY_CAMERA if name == LEGACY_CAMERA else rig_camera_topic(name)


class TimeWentBack(BadMessage):
    """A frame older than its camera's last one: taken (every earlier frame dropped), and named."""


class CameraSet:
    def __init__(self, rig: CameraRig | None = None, slop_s: float = 0.05, history: int = 1):
        self.rig, self.slop_s = rig, float(slop_s)
        self.names = rig.names if rig is not None else (LEGACY_CAMERA,)
        self.latest: dict[str, tuple[np.ndarray, float]] = {}
        self.synced: tuple[np.ndarray, float] | None = None  # (image, or (views, h, w, 3) stack; stamp)
        self.history = FrameHistory(history) if history > 1 else None

    def sizes(self, name: str) -> tuple[tuple[int, int], ...]:
        """(H, W) accepted from camera ``name``: its native size, or already the model's input size."""
        if self.rig is None:
            return ()
        cam = self.rig.camera(name)
        return (cam.height, cam.width), (self.rig.model_height, self.rig.model_width)

    def on_frame(self, name: str, msg: Image, now: float | None = None) -> None:
        """Decode one frame (BadMessage names what is wrong with it) and form a set if all cameras agree.
        ``now`` is the node's clock (s; None or 0 = not known yet, as with sim time before the first /clock)."""
        stamp = stamp_to_seconds(msg.header.stamp)
        went_back_from = self._check_stamp(name, stamp, now)
        allowed = self.sizes(name)
        if allowed and (msg.height, msg.width) not in allowed:
            (h, w), (mh, mw) = allowed
            raise BadMessage("wrong_resolution", f"camera {name} sends {msg.width}x{msg.height}; the "
                                                 f"{self.rig.name} rig has {w}x{h} there (or the model's {mw}x{mh})")
        self.latest[name] = (self._decode(msg), stamp)
        self._assemble()
        if went_back_from is not None:  # taken, and said: the node judges the frame by its age as any other
            raise TimeWentBack("stamp_backwards", f"camera {name} frame at {stamp:.3f} s is older than its last one "
                                                f"at {went_back_from:.3f} s: time went backwards; starting over")

    def _check_stamp(self, name: str, stamp: float, now: float | None) -> float | None:
        """Refuse, before any decoding, a frame stamped in the future or twice. A frame older than the camera's
        last one drops every frame held (a simulator reset or a bag played again starts over: its first frame
        may arrive before the clock that goes back with it) and returns the last stamp when the node's clock
        has not gone back too, so that the caller names it; the frame is then as old as it is, and a camera
        clock that jumped back makes the camera stale, and the car stop, at once."""
        if now and stamp > now + MAX_CLOCK_SKEW_S:
            raise BadMessage("stamp_in_future", f"camera {name} frame stamped {stamp - now:.3f} s ahead of the clock")
        last = self.latest.get(name)
        if last is None:
            return None
        if stamp == last[1]:
            raise BadMessage("duplicate_stamp", f"camera {name} sent a second frame stamped {stamp:.3f} s")
        if stamp > last[1]:
            return None
        self.latest.clear()
        self.synced = None
        if self.history is not None:
            self.history.clear()
        return None if now and now < last[1] else last[1]

    def _decode(self, msg: Image) -> np.ndarray:
        """A rig's frame is brought to the model's input size as it arrives (unpacked and resized in one
        pass, and only the small frame is held); without a rig the frame is the model's input as it is."""
        if self.rig is None or (msg.height, msg.width) == (self.rig.model_height, self.rig.model_width):
            return image_to_rgb(msg)
        return fit_to_model(image_to_pil(msg), self.rig)

    def _assemble(self) -> None:
        latest = self.latest
        if len(latest) < len(self.names):
            return
        stamps = [latest[n][1] for n in self.names]
        if max(stamps) - min(stamps) > self.slop_s:
            return
        if self.rig is None:
            self.synced = latest[LEGACY_CAMERA]
            return
        frames, stamp = [latest[n][0] for n in self.names], max(stamps)
        if self.history is not None:
            self.history.push(np.stack(frames), stamp)
            self.synced = (self.history.views(), stamp)
        else:
            self.synced = (np.stack(frames), stamp)

    def ages(self, now: float) -> dict[str, float | None]:
        """Seconds since each camera's newest frame and, with a rig, since the newest set the model can use
        (None = never): every camera may send while no set forms (their stamps never within the slop)."""
        ages = {self.key(n): None if n not in self.latest else max(0.0, now - self.latest[n][1]) for n in self.names}
        if self.rig is not None:
            ages[CAMERA_SET] = None if self.synced is None else max(0.0, now - self.synced[1])
        return ages

    def lagging(self) -> list[str]:
        """Cameras whose newest frame trails the newest of the others by more than the slop."""
        if len(self.latest) < 2:
            return []
        newest = max(stamp for _, stamp in self.latest.values())
        return [self.key(n) for n in self.names if n in self.latest and newest - self.latest[n][1] > self.slop_s]

    @staticmethod
    def key(name: str) -> str:
        """How a camera is named in diagnostics: ``image`` without a rig, else ``camera_<name>``."""
        return name if name == LEGACY_CAMERA else f"camera_{name}"

    def subscribe(self, node, guard, qos, callback=None, **kwargs) -> None:
        """One subscription per camera on ``node``; ``guard`` (NodeDiagnostics.guard) rejects bad frames with a
        diagnostic; ``callback(name)`` runs after each accepted frame."""
        for name in self.names:
            def on_frame(msg, name=name):
                try:
                    self.on_frame(name, msg, node.get_clock().now().nanoseconds * 1e-9)
                except TimeWentBack:  # the frame was taken: its cycle runs, and the guard names the jump
                    if callback is not None:
                        callback(name)
                    raise
                if callback is not None:
                    callback(name)
            node.create_subscription(Image, camera_topic(name), guard(self.key(name), on_frame), qos, **kwargs)

