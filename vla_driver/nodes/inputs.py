"""What a model node holds of its inputs: the newest camera set, odometry and navigation, as one Observation."""
from __future__ import annotations

import numpy as np
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Image
from std_msgs.msg import String

from vla_driver.core.ego import filtered_accel
from vla_driver.core.types import Observation

from .camera_set import LEGACY_CAMERA, CameraSet
from .convert import MAX_NAVIGATION_CHARS, BadMessage, EgoState, odometry_to_state


class ObservationAssembler:
    """Keeps the latest camera set, odometry and navigation and turns them into an Observation.

    Each ``on_*`` method decodes one message (raising :class:`BadMessage`) and swaps in the new value
    as one reference, so callbacks on other executor threads never see half an update. The cameras are
    a :class:`CameraSet` (the rig's, or the one ``image`` of the top-down models).
    """

    def __init__(self, default_navigation: str = "", cameras: CameraSet | None = None):
        self.cameras = cameras or CameraSet()
        self.ego: tuple[EgoState, float] | None = None  # (state, filtered accel)
        self.navigation = default_navigation

    @property
    def image(self) -> tuple[np.ndarray, float] | None:
        """The newest synchronised camera set (or single image) and its stamp."""
        return self.cameras.synced

    def on_image(self, msg: Image) -> None:
        """A frame of the single camera of the top-down models (``image``)."""
        self.cameras.on_frame(LEGACY_CAMERA, msg)

    def on_odometry(self, msg: Odometry) -> None:
        state, accel = odometry_to_state(msg), 0.0
        if self.ego is not None:
            prev, prev_accel = self.ego
            accel = filtered_accel(prev_accel, prev.speed, state.speed, state.stamp - prev.stamp)
        self.ego = (state, accel)

    def on_navigation(self, msg: String) -> None:
        if len(msg.data) > MAX_NAVIGATION_CHARS:
            raise BadMessage("navigation_too_long", f"{len(msg.data)} characters, at most {MAX_NAVIGATION_CHARS}")
        text = msg.data.strip()
        if not text:
            raise BadMessage("empty_navigation", "navigation instruction is empty")
        self.navigation = text

    def ages(self, now: float) -> dict[str, float | None]:
        """Seconds since each input's stamp (None = never received); clamped at 0 for clock skew."""
        ego = self.ego
        return {**self.cameras.ages(now), "odom": None if ego is None else max(0.0, now - ego[0].stamp)}

    def observation(self) -> Observation:
        """The latest inputs as one Observation stamped with the image time; needs image and odometry."""
        (rgb, stamp), (state, accel) = self.image, self.ego
        return Observation(
            image=rgb, speed=state.speed, navigation=self.navigation, accel=accel,
            yaw_rate=state.yaw_rate, stamp=stamp,
        )
