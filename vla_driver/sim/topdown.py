"""The simulator's camera: a top-down, ego-aligned view of the highway-env scene (the ego car at 30 % of
the width, half height, facing right; the image spans ``CAMERA_VIEW_M`` metres across), and the mapping
from ego-frame points to its pixels."""
from __future__ import annotations

import math
import os

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")  # "dummy" renders black frames in highway-env 1.12

# highway_env first: it hides pygame's greeting on stdout before it imports pygame
import highway_env  # noqa: E402, F401, I001
import pygame  # noqa: E402
from highway_env.road.graphics import LaneGraphics, RoadGraphics, WorldSurface  # noqa: E402
from highway_env.road.lane import LineType  # noqa: E402

CAMERA_VIEW_M = 85.0
CAMERA_EGO_COL = 0.3


def camera_layout(image_size) -> tuple[float, float, float]:
    """(ego column px, ego row px, pixels per metre) of the ego-aligned camera image."""
    h, w = int(image_size[0]), int(image_size[1])
    return CAMERA_EGO_COL * w, 0.5 * h, w / CAMERA_VIEW_M


def ego_to_pixel(xy_ego: np.ndarray, image_size) -> np.ndarray:
    """Ego-frame points (x forward, y left) -> (column, row) pixel coordinates in the camera image."""
    col, row, scale = camera_layout(image_size)
    xy = np.asarray(xy_ego, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([col + xy[:, 0] * scale, row - xy[:, 1] * scale])


class _RoadLayer:
    """highway-env's ``RoadGraphics.display`` (lane markings), pixel for pixel, without recomputing the
    geometry every frame. Its stripes sit at fixed multiples of ``STRIPE_SPACING`` along each lane, so
    the same world points come back frame after frame: ``lane.position`` is memoised per (s, lateral),
    the world -> pixel conversion is vectorised with the same truncation, and only the line drawing
    stays per frame. That was ~80 % of a 37 ms frame in the roundabout (every rollout and evaluation
    step renders one); the test compares the pixels with highway-env's own drawing."""

    def __init__(self):
        self._network = None
        self._points: dict = {}

    def _position(self, lane, s: float, lat: float) -> tuple[float, float]:
        key = (id(lane), s, lat)
        point = self._points.get(key)
        if point is None:
            point = self._points[key] = tuple(lane.position(s, lat))
        return point

    def display(self, road, surface) -> None:
        G = LaneGraphics
        if road.network is not self._network:  # a reset builds a new network: forget the old lanes
            self._network, self._points = road.network, {}
        surface.fill(surface.GREY)
        count = int(2 * (surface.get_height() + surface.get_width()) / (G.STRIPE_SPACING * surface.scaling))
        width = max(surface.pix(G.STRIPE_WIDTH), 1)
        segments = []
        for lane in road.network.lanes_list():
            s_origin, _ = lane.local_coordinates(surface.origin)
            s0 = (int(s_origin) // G.STRIPE_SPACING - count // 2) * G.STRIPE_SPACING
            for side in range(2):
                kind = lane.line_types[side]
                if kind == LineType.STRIPED or kind == LineType.CONTINUOUS:
                    starts = s0 + np.arange(count) * G.STRIPE_SPACING
                    ends = starts + (G.STRIPE_LENGTH if kind == LineType.STRIPED else G.STRIPE_SPACING)
                elif kind == LineType.CONTINUOUS_LINE:
                    starts = np.array([s0])
                    ends = np.array([s0 + count * G.STRIPE_SPACING + G.STRIPE_LENGTH])
                else:
                    continue
                a, b = np.clip(starts, 0, lane.length), np.clip(ends, 0, lane.length)
                for k in np.flatnonzero(np.abs(a - b) > 0.5 * G.STRIPE_LENGTH).tolist():
                    lat = (side - 0.5) * lane.width_at(starts[k])
                    segments.append(self._position(lane, a[k], lat) + self._position(lane, b[k], lat))
        if not segments:
            return
        world = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
        # WorldSurface.pos2pix: int((x - origin) * scaling), truncated toward zero like int()
        pixels = ((world - np.asarray(surface.origin, dtype=np.float64)) * surface.scaling).astype(np.int64)
        for x0, y0, x1, y1 in pixels.reshape(-1, 4).tolist():
            pygame.draw.line(surface, surface.WHITE, (x0, y0), (x1, y1), width)


class TopDownCamera:
    """Ego-aligned top view: draw a square around the ego, rotate it so the ego faces right, crop."""

    def __init__(self, image_size):
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.col, self.row, scale = camera_layout(image_size)
        half = math.ceil(math.hypot(max(self.col, self.width - self.col), max(self.row, self.height - self.row))) + 2
        size = (2 * half, 2 * half)
        self.surface = WorldSurface(size, 0, pygame.Surface(size))
        self.surface.scaling = scale
        self.surface.centering_position = [0.5, 0.5]
        self.road_layer = _RoadLayer()

    def render(self, road, ego) -> np.ndarray:
        self.surface.move_display_window_to(ego.position)
        self.road_layer.display(road, self.surface)
        RoadGraphics.display_road_objects(road, self.surface, offscreen=True)
        RoadGraphics.display_traffic(road, self.surface, offscreen=True)
        rotated = pygame.transform.rotate(self.surface, math.degrees(ego.heading))
        left = int(round(rotated.get_width() / 2 - self.col))
        top = int(round(rotated.get_height() / 2 - self.row))
        pixels = pygame.surfarray.array3d(rotated.subsurface((left, top, self.width, self.height)))
        return np.ascontiguousarray(pixels.transpose(1, 0, 2), dtype=np.uint8)
