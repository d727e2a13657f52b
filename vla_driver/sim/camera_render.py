"""Perspective cameras for the embedded simulator: the highway-env scene rendered in 3D on the CPU.

Panda3D's TinyPanda is a pure-software rasteriser: no GPU, display or system GL library. This module
uses Panda3D's low-level graphics engine directly instead of ShowBase: ShowBase is a process-wide
singleton that also opens input devices, a task manager and audio; a ``GraphicsEngine`` per renderer
is not, so several renderers can live in one process, and each renders only its own buffers.

Scene. The world is right-handed like the rest of the project: highway-env's (x, y, heading) becomes
(x, -y, -heading), z up. The road is flat. Ground layers (verge, road surface, lane markings) are drawn
in a fixed order without depth testing, so markings never z-fight with the road and vehicles (solid
boxes, lit by one directional light) always cover the ground. Road geometry is built once per road
shape, in 50 m tiles that Panda3D culls against each camera's frustum; resets and snapshot restores
of a scene bring new network objects with the same shape and reuse it. The ego car is not drawn: its
cameras are on it.

Colours. Each vehicle keeps the palette slot it got when first rendered (stored on the vehicle, counted
on the road), so a car keeps its colour for the whole episode, through snapshots, and every renderer
agrees. Rendering is deterministic: the same scene and appearance give byte-identical frames.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from highway_env.road.lane import LineType, StraightLane
from panda3d.core import loadPrcFileData
from PIL import Image

from ..core.camera_rig import CameraRig, CameraSpec

loadPrcFileData("vla_driver.camera_render", "\n".join([
    "load-display p3tinydisplay",  # never look for a GPU driver or an X display
    "audio-library-name null",
    "notify-level error",  # Panda3D's info/warning chatter; errors still print
    "default-directnotify-level error",
]))

from panda3d.core import (  # noqa: E402  (the config above must be loaded first)
    AmbientLight,
    Camera,
    DirectionalLight,
    FrameBufferProperties,
    Geom,
    GeomNode,
    GeomTriangles,
    GeomVertexData,
    GeomVertexFormat,
    GraphicsEngine,
    GraphicsOutput,
    GraphicsPipe,
    GraphicsPipeSelection,
    Mat4,
    NodePath,
    PerspectiveLens,
    Texture,
    Vec3,
    Vec4,
    WindowProperties,
)

DASH_M, GAP_M = 3.0, 9.0  # STRIPED lines: 3 m dashes every 12 m (US highway lane lines)
VEHICLE_HEIGHT_M = 1.5
OBSTACLE_HEIGHT_M = 1.0
TILE_M = 50.0  # road geometry is grouped into square tiles of this size for frustum culling
STRAIGHT_STEP_M, CURVE_STEP_M = 10.0, 1.0  # sampling along lanes
ROAD_OVERLAP_M = 0.05  # each lane's surface is widened a little so neighbours leave no pixel cracks
GROUND_HALF_M = 1500.0  # the verge plane follows the ego; beyond it is sky
NEAR_M, FAR_M = 0.2, 2000.0
ROAD_MODELS_KEPT = 8  # road geometries a renderer keeps (scenes it alternates between)
_COLOR_SLOT, _COLOR_COUNT = "_vla_camera_color_slot", "_vla_camera_color_count"

_pipe = None


def _tiny_pipe():
    """The process's TinyPanda offscreen pipe (a pipe is a driver handle; engines and buffers are not shared)."""
    global _pipe
    if _pipe is None:
        _pipe = GraphicsPipeSelection.getGlobalPtr().makePipe("TinyOffscreenGraphicsPipe", "p3tinydisplay")
        if _pipe is None or not _pipe.isValid():
            raise RuntimeError("Panda3D's TinyPanda software renderer is not available")
    return _pipe


@dataclass(frozen=True)
class Appearance:
    """What the world looks like (colours in 0..255). ``sample`` draws one per episode for domain
    randomisation; the camera offsets are a deliberate calibration error (CameraInfo stays nominal)."""

    sky: tuple[int, int, int] = (165, 195, 230)
    verge: tuple[int, int, int] = (96, 122, 70)
    road: tuple[int, int, int] = (88, 88, 92)
    marking_width_m: float = 0.15
    marking_brightness: float = 0.92  # marking grey level as a fraction of white
    light_azimuth_deg: float = 135.0  # where the sun is, counter-clockwise from the world's x axis
    light_elevation_deg: float = 50.0
    ambient: float = 0.45  # light on faces turned away from the sun
    vehicle_colors: tuple[tuple[int, int, int], ...] = (
        (200, 40, 40), (40, 90, 200), (230, 200, 40), (235, 235, 235), (30, 30, 35),
        (40, 160, 80), (150, 60, 170), (230, 130, 40), (120, 120, 130), (60, 190, 200))
    obstacle: tuple[int, int, int] = (240, 110, 20)
    camera_dz_m: float = 0.0
    camera_dpitch_deg: float = 0.0

    @classmethod
    def default(cls) -> Appearance:
        return cls()

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Appearance:
        def jitter(rgb, amount):
            return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))

        base = cls()
        grey = int(rng.integers(60, 125))
        clouds = float(rng.uniform(0.0, 1.0))  # blue sky -> overcast grey
        sky_rgb = tuple(int(round((1 - clouds) * b + clouds * g)) for b, g in zip(base.sky, (200, 203, 208), strict=True))
        palette = [base.vehicle_colors[i] for i in rng.permutation(len(base.vehicle_colors))]
        return cls(
            sky=jitter(sky_rgb, 12),
            verge=jitter((int(rng.integers(70, 140)), int(rng.integers(100, 150)), int(rng.integers(50, 90))), 8),
            road=jitter((grey, grey, grey + 4), 4),
            marking_width_m=float(rng.uniform(0.10, 0.22)),
            marking_brightness=float(rng.uniform(0.65, 1.0)),
            light_azimuth_deg=float(rng.uniform(0.0, 360.0)),
            light_elevation_deg=float(rng.uniform(20.0, 80.0)),
            ambient=float(rng.uniform(0.3, 0.65)),
            vehicle_colors=tuple(jitter(c, 20) for c in palette),
            obstacle=jitter(base.obstacle, 15),
            camera_dz_m=float(rng.uniform(-0.1, 0.1)),
            camera_dpitch_deg=float(rng.uniform(-1.5, 1.5)),
        )

    @classmethod
    def held_out(cls, rng: np.random.Generator) -> Appearance:
        """A look ``sample`` never draws, for testing what a model learned: every setting outside its training
        range (dusk skies, dark asphalt or pale concrete, sand or snow verges, dim narrow or wide markings, low
        sun, other car colours, camera 0.12-0.2 m higher or lower and pitched 2-3 degrees)."""
        def pick(*ranges):
            lo, hi = ranges[int(rng.integers(len(ranges)))]
            return float(rng.uniform(lo, hi))

        def rgb(*options):
            base = np.asarray(options[int(rng.integers(len(options)))])
            return tuple(int(v) for v in np.clip(base + rng.integers(-10, 11, 3), 0, 255))

        grey = int(pick((30, 50), (140, 165)))
        return cls(
            sky=rgb((235, 160, 110), (120, 120, 150), (250, 215, 170)),  # dusk, storm, haze
            verge=rgb((200, 180, 130), (225, 230, 235), (140, 110, 80)),  # sand, snow, bare earth
            road=(grey, grey, grey + 2),
            marking_width_m=pick((0.06, 0.09), (0.24, 0.30)),
            marking_brightness=pick((0.45, 0.62)),
            light_azimuth_deg=float(rng.uniform(0.0, 360.0)),
            light_elevation_deg=pick((5.0, 17.0)),
            ambient=pick((0.15, 0.27), (0.7, 0.8)),
            vehicle_colors=tuple(rgb(c) for c in ((255, 150, 190), (110, 70, 40), (180, 230, 120), (90, 40, 120),
                                                  (200, 170, 90), (30, 100, 100), (255, 90, 160), (150, 190, 255))),
            obstacle=rgb((60, 200, 255)),
            camera_dz_m=pick((-0.2, -0.12), (0.12, 0.2)),
            camera_dpitch_deg=pick((-3.0, -2.0), (2.0, 3.0)),
        )


# DrivingSim(appearance=...): an episode's look from its seed's generator: the default one, one that
# ``Appearance.sample`` draws (training), or a held-out one
APPEARANCES = {"default": lambda rng: Appearance.default(), "random": Appearance.sample,
               "held_out": Appearance.held_out}


def _color(rgb, scale: float = 1.0) -> Vec4:
    return Vec4(*(min(1.0, c * scale / 255.0) for c in rgb), 1.0)


def _triangles(name: str, vertices: np.ndarray, normals: np.ndarray | None = None) -> Geom:
    """A Geom of unindexed triangles from (3N, 3) vertex positions (and normals), copied in one go."""
    fmt = GeomVertexFormat.getV3() if normals is None else GeomVertexFormat.getV3n3()
    data = np.ascontiguousarray(vertices if normals is None else np.hstack([vertices, normals]), np.float32)
    vdata = GeomVertexData(name, fmt, Geom.UHStatic)
    vdata.uncleanSetNumRows(len(data))
    memoryview(vdata.modifyArray(0)).cast("B").cast("f")[:] = data.ravel()
    prim = GeomTriangles(Geom.UHStatic)
    prim.addNextVertices(len(data))
    geom = Geom(vdata)
    geom.addPrimitive(prim)
    return geom


def _triangles_node(name: str, vertices: np.ndarray) -> GeomNode:
    node = GeomNode(name)
    node.addGeom(_triangles(name, vertices))
    return node


def _strip(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (M, 2) edge polylines -> (6 (M - 1), 3) triangle vertices of the band between them, z = 0."""
    a, b, c, d = left[:-1], right[:-1], right[1:], left[1:]
    tris = np.stack([a, b, c, a, c, d], axis=1).reshape(-1, 2)
    return np.hstack([tris, np.zeros((len(tris), 1))])


def _samples(lane, start: float, end: float) -> np.ndarray:
    step = STRAIGHT_STEP_M if type(lane) is StraightLane else CURVE_STEP_M  # SineLane is a StraightLane too
    n = max(1, math.ceil((end - start) / step))
    return np.linspace(start, end, n + 1)


def _positions(lane, s: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """``lane.position`` for many points; straight lanes (10 km of them on the highway) in one go. Exactly
    StraightLane: its subclass SineLane (merge ramps, roundabout approaches) bends."""
    if type(lane) is StraightLane:
        return lane.start + s[:, None] * lane.direction + lat[:, None] * lane.direction_lateral
    return np.array([lane.position(a, b) for a, b in zip(s, lat, strict=True)])


def _bands(lane, pieces: list[tuple[float, float]], side: int | None, half_width: float) -> np.ndarray:
    """(N, 3) triangle vertices covering each (start, end) piece of a lane, in the right-handed world: the
    road surface (``side`` None) or a band of ``half_width`` on the lane's line ``side`` (0: highway-env's
    left, as in its ``line_types``)."""
    parts = [_samples(lane, a, b) for a, b in pieces]
    s = np.concatenate(parts)
    widths = np.array([lane.width_at(si) for si in s])
    if side is None:
        centre, half = np.zeros_like(s), widths / 2 + ROAD_OVERLAP_M
    else:
        centre, half = (side - 0.5) * widths, np.full_like(s, half_width)
    a, b = _positions(lane, s, centre - half), _positions(lane, s, centre + half)
    a[:, 1] *= -1
    b[:, 1] *= -1
    keep = np.ones(len(s) - 1, dtype=bool)
    keep[np.cumsum([len(p) for p in parts])[:-1] - 1] = False  # no quad from one piece to the next
    return _strip(a, b).reshape(-1, 6, 3)[keep].reshape(-1, 3)


def _box_geometry() -> tuple[np.ndarray, np.ndarray]:
    """Unit cube centred at the origin: (36, 3) vertices with outward, counter-clockwise faces and normals."""
    verts, norms = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            axes = np.roll(np.eye(3), -axis, axis=0)
            u, v = axes[1] * 0.5, axes[2] * 0.5
            if sign < 0:
                u, v = v, u
            c = n * 0.5
            quad = [c - u - v, c + u - v, c + u + v, c - u + v]
            for i in (0, 1, 2, 0, 2, 3):
                verts.append(quad[i])
                norms.append(n)
    return np.array(verts), np.array(norms)


def _geometry_key(network) -> str:
    """The road's exact shape: highway-env's own description of every lane. A reset builds a new network
    object (and a snapshot restore deep-copies one) with the same lanes, so their geometry is reused."""
    return hashlib.sha1(repr([lane.to_config() for lane in network.lanes_list()]).encode()).hexdigest()


class _RoadModel:
    """Road surface and lane markings of one road network, tiled for frustum culling."""

    def __init__(self, network, marking_width: float, parent_road: NodePath, parent_marks: NodePath):
        self.marking_width = marking_width
        road, marks = self._triangles(network, marking_width)
        self.nodes = [self._attach(parent_road, "road", road), self._attach(parent_marks, "marking", marks)]

    @staticmethod
    def _triangles(network, marking_width: float) -> tuple[list, list]:
        road, marks = [], []
        for lane in network.lanes_list():
            road.append(_bands(lane, [(0.0, lane.length)], None, 0.0))
            for side in range(2):
                kind = lane.line_types[side]
                if kind == LineType.STRIPED:
                    starts = np.arange(0.0, lane.length, DASH_M + GAP_M)
                    pieces = [(a, min(a + DASH_M, lane.length)) for a in starts if lane.length - a >= 0.05]
                elif kind in (LineType.CONTINUOUS, LineType.CONTINUOUS_LINE):
                    pieces = [(0.0, lane.length)]
                else:
                    continue
                if pieces:
                    marks.append(_bands(lane, pieces, side, marking_width / 2))
        return road, marks

    @staticmethod
    def _attach(parent: NodePath, name: str, bands: list) -> NodePath:
        """One GeomNode per tile; a triangle goes to the tile of its first vertex."""
        root = parent.attachNewNode(name)
        if not bands:
            return root
        tris = np.concatenate(bands).reshape(-1, 3, 3)
        keys = np.floor(tris[:, 0, :2] / TILE_M).astype(np.int64)
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        tris, keys = tris[order], keys[order]
        bounds = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        for chunk in np.split(tris, bounds):
            root.attachNewNode(_triangles_node(name, chunk.reshape(-1, 3)))
        return root

    def show(self, visible: bool) -> None:
        for node in self.nodes:
            if visible:
                node.unstash()
            else:
                node.stash()

    def remove(self) -> None:
        for node in self.nodes:
            node.removeNode()


class _View(NamedTuple):
    """One image to draw: the camera's name, the image size and its pinhole K."""

    name: str
    width: int
    height: int
    K: np.ndarray


class _Target(NamedTuple):
    engine: GraphicsEngine
    buffer: GraphicsOutput
    texture: Texture
    camera: NodePath


class _Outputs:
    """One offscreen buffer per image size, re-aimed (lens and pose) for each camera of that size and
    drawn by its own GraphicsEngine. Measured on front3 against one buffer per camera drawn by one
    ``renderFrame``: 14.6 vs 26.0 ms at 1600x900, 0.7 vs 1.1 ms at the model size (a buffer that was
    just drawn is read back from cache)."""

    def __init__(self, scene: NodePath, views: list[_View], clear: Vec4):
        pipe = _tiny_pipe()
        fbp = FrameBufferProperties()
        fbp.setRgbColor(True)
        fbp.setColorBits(24)
        fbp.setDepthBits(16)
        self.views = views
        self.lenses = [_lens(v.K, v.width, v.height) for v in views]
        self.targets: dict[tuple[int, int], _Target] = {}
        for view, lens in zip(views, self.lenses, strict=True):
            size = (view.width, view.height)
            if size in self.targets:
                continue
            engine = GraphicsEngine(pipe)
            buffer = engine.makeOutput(pipe, f"camera_{view.width}x{view.height}", 0, fbp,
                                       WindowProperties.size(*size), GraphicsPipe.BFRefuseWindow)
            if buffer is None:
                raise RuntimeError(f"TinyPanda could not open a {view.width}x{view.height} offscreen buffer")
            texture = Texture(view.name)
            buffer.addRenderTexture(texture, GraphicsOutput.RTMCopyRam)
            buffer.setClearColor(clear)
            camera = scene.attachNewNode(Camera(view.name, lens))
            buffer.makeDisplayRegion().setCamera(camera)
            self.targets[size] = _Target(engine, buffer, texture, camera)

    def set_clear(self, clear: Vec4) -> None:
        for target in self.targets.values():
            target.buffer.setClearColor(clear)

    def render(self, poses: list[Mat4]) -> dict[str, np.ndarray]:
        """{camera name: (H, W, 3) uint8} with each camera placed at its pose (world <- Panda3D camera)."""
        frames = {}
        for view, lens, pose in zip(self.views, self.lenses, poses, strict=True):
            engine, _, texture, camera = self.targets[(view.width, view.height)]
            camera.node().setLens(lens)
            camera.setMat(pose)
            engine.renderFrame()
            rgb = np.frombuffer(texture.getRamImageAs("RGB"), np.uint8).reshape(view.height, view.width, 3)
            frames[view.name] = np.ascontiguousarray(rgb[::-1])  # rows come bottom-up
        return frames

    def close(self) -> None:
        for target in self.targets.values():
            target.camera.removeNode()
            target.engine.removeAllWindows()
        self.targets = {}


def _lens(K: np.ndarray, width: int, height: int) -> PerspectiveLens:
    """A Panda3D lens with exactly the pinhole K on a width x height image (continuous pixel coordinates)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lens = PerspectiveLens()
    lens.setFilmSize(width / fx, height / fy)  # film in units of the focal length
    lens.setFocalLength(1.0)
    lens.setFilmOffset((width / 2 - cx) / fx, (cy - height / 2) / fy)
    lens.setNearFar(NEAR_M, FAR_M)
    return lens


# Panda3D's camera looks along +y with z up: its axes expressed in the ROS optical frame (x right, y down,
# z forward), as columns.
_OPTICAL_FROM_PANDA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class CameraRenderer:
    """Renders every camera of a rig from the ego car of a highway-env road.

    ``render`` gives native-size frames (as a real camera would publish them); ``render_model_inputs``
    gives what the model sees at the rig's input size, rendered directly there: only the pixels that
    survive ``fit_to_model`` are drawn (letterbox: the scaled frame, crop: the kept window, each with the
    K that ``rig.model_K`` reports), ``supersample`` x ``supersample`` samples per pixel averaged, like the
    area filter of a downscale, so thin markings far away fade instead of flickering.
    """

    def __init__(self, rig: CameraRig, appearance: Appearance | None = None, supersample: int = 2):
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.rig, self.supersample = rig, int(supersample)
        self.appearance = appearance or Appearance.default()
        self.scene = NodePath("scene")
        self._ground_root = self.scene.attachNewNode("ground")
        layers = []
        for order, name in enumerate(("verge", "road", "markings")):
            layer = self._ground_root.attachNewNode(name)
            layer.setBin("background", order)
            layer.setDepthTest(False)
            layer.setDepthWrite(False)
            layer.setTwoSided(True)
            layer.setLightOff()
            layers.append(layer)
        self._verge_layer, self._road_layer, self._marking_layer = layers
        g = GROUND_HALF_M
        quad = np.array([[-g, -g, 0], [g, -g, 0], [g, g, 0], [-g, -g, 0], [g, g, 0], [-g, g, 0]])
        self._verge = self._verge_layer.attachNewNode(_triangles_node("verge", quad))
        self._actors = self.scene.attachNewNode("actors")
        box_vertices, box_normals = _box_geometry()
        self._box = _triangles("box", box_vertices, box_normals)
        self._pool: list[NodePath] = []
        self._sun = self.scene.attachNewNode(DirectionalLight("sun"))
        self._ambient = self.scene.attachNewNode(AmbientLight("ambient"))
        self._actors.setLight(self._sun)
        self._actors.setLight(self._ambient)
        self._network = None  # the network shown now
        self._road_models: dict[str, _RoadModel] = {}  # by geometry key, oldest first
        self._outputs: dict[str, _Outputs] = {}
        self.set_appearance(self.appearance)

    # ------------------------------------------------------------------ configuration
    def set_appearance(self, appearance: Appearance) -> None:
        """Switch the look (e.g. a freshly sampled one at each episode start)."""
        a = self.appearance = appearance
        self._verge_layer.setColor(_color(a.verge))
        self._road_layer.setColor(_color(a.road))
        self._marking_layer.setColor(_color((255, 255, 255), a.marking_brightness))
        el, az = math.radians(a.light_elevation_deg), math.radians(a.light_azimuth_deg)
        towards_sun = Vec3(math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
        self._sun.node().setDirection(-towards_sun)
        self._sun.node().setColor(Vec4(1 - a.ambient, 1 - a.ambient, 1 - a.ambient, 1))
        self._ambient.node().setColor(Vec4(a.ambient, a.ambient, a.ambient, 1))
        for outputs in self._outputs.values():
            outputs.set_clear(_color(a.sky))
        for key in [k for k, m in self._road_models.items() if m.marking_width != a.marking_width_m]:
            self._road_models.pop(key).remove()
            self._network = None  # rebuild at the next frame

    def _views(self, kind: str) -> list[_View]:
        """Native frames, or only the part of the model image a camera fills (letterbox bars are not
        drawn), ``supersample`` times larger, with the matching K."""
        views = []
        for cam in self.rig.cameras:
            if kind == "native":
                views.append(_View(cam.name, cam.width, cam.height, cam.K))
                continue
            geo = self.rig.fit(cam)
            x0, y0, w, h = geo.dst_box
            K = geo.intrinsics(cam.K) - np.array([[0, 0, x0], [0, 0, y0], [0, 0, 0]])
            ss = self.supersample
            views.append(_View(cam.name, w * ss, h * ss, np.diag([ss, ss, 1.0]) @ K))
        return views

    def _outputs_for(self, kind: str) -> _Outputs:
        if kind not in self._outputs:
            self._outputs[kind] = _Outputs(self.scene, self._views(kind), _color(self.appearance.sky))
        return self._outputs[kind]

    # ------------------------------------------------------------------ per frame
    def _update(self, road, ego) -> list[Mat4]:
        """Move the scene to this instant; returns each camera's pose (world <- Panda3D camera)."""
        self._show_road(road.network)
        ex, ey, eyaw = float(ego.position[0]), -float(ego.position[1]), -float(ego.heading)
        self._verge.setPos(ex, ey, 0.0)
        self._place_actors(road, ego)
        world_from_ego = np.eye(4)
        c, s = math.cos(eyaw), math.sin(eyaw)
        world_from_ego[:2, :2] = [[c, -s], [s, c]]
        world_from_ego[:2, 3] = (ex, ey)
        return [_panda_mat(world_from_ego @ self._mounted(cam).ego_from_optical()) for cam in self.rig.cameras]

    def _show_road(self, network) -> None:
        """Show the network's road, built the first time its shape is seen."""
        if network is self._network:
            return
        self._network, key = network, _geometry_key(network)
        if key not in self._road_models:
            if len(self._road_models) >= ROAD_MODELS_KEPT:
                self._road_models.pop(next(iter(self._road_models))).remove()
            self._road_models[key] = _RoadModel(network, self.appearance.marking_width_m,
                                                self._road_layer, self._marking_layer)
        for k, model in self._road_models.items():
            model.show(k == key)

    def _mounted(self, cam: CameraSpec) -> CameraSpec:
        a = self.appearance
        if not (a.camera_dz_m or a.camera_dpitch_deg):
            return cam
        return replace(cam, z=cam.z + a.camera_dz_m, pitch_deg=cam.pitch_deg + a.camera_dpitch_deg)

    def _place_actors(self, road, ego) -> None:
        palette = self.appearance.vehicle_colors
        boxes = []
        for v in road.vehicles:
            if v is ego:
                continue
            slot = getattr(v, _COLOR_SLOT, None)
            if slot is None:
                slot = getattr(road, _COLOR_COUNT, 0)
                setattr(road, _COLOR_COUNT, slot + 1)
                setattr(v, _COLOR_SLOT, slot)
            boxes.append((v, VEHICLE_HEIGHT_M, palette[slot % len(palette)]))
        boxes += [(o, OBSTACLE_HEIGHT_M, self.appearance.obstacle) for o in road.objects if getattr(o, "solid", True)]
        while len(self._pool) < len(boxes):
            node = GeomNode("box")
            node.addGeom(self._box)
            self._pool.append(self._actors.attachNewNode(node))
        for np_, (obj, height, rgb) in zip(self._pool, boxes, strict=False):
            np_.unstash()
            np_.setPosHprScale(float(obj.position[0]), -float(obj.position[1]), height / 2,
                               -math.degrees(float(obj.heading)), 0.0, 0.0,
                               float(obj.LENGTH), float(obj.WIDTH), height)
            np_.setColor(_color(rgb))
        for np_ in self._pool[len(boxes):]:
            np_.stash()

    def render(self, road, ego) -> dict[str, np.ndarray]:
        """{camera name: (H, W, 3) uint8 RGB} at each camera's native size."""
        return self._outputs_for("native").render(self._update(road, ego))

    def render_model_inputs(self, road, ego) -> dict[str, np.ndarray]:
        """{camera name: (model_height, model_width, 3) uint8 RGB}, as ``fit_to_model`` of a native frame."""
        frames = self._outputs_for("model").render(self._update(road, ego))
        ss, out = self.supersample, {}
        for cam in self.rig.cameras:
            img = frames[cam.name]
            if ss > 1:  # box filter with rounding: the mean of each ss x ss block
                img = np.asarray(Image.fromarray(img).reduce(ss))
            x0, y0, w, h = self.rig.fit(cam).dst_box
            if (w, h) != (self.rig.model_width, self.rig.model_height):
                padded = np.zeros((self.rig.model_height, self.rig.model_width, 3), dtype=np.uint8)
                padded[y0:y0 + h, x0:x0 + w] = img
                img = padded
            out[cam.name] = img
        return out

    def close(self) -> None:
        """Free the buffers (the scene graph goes with the object)."""
        for outputs in self._outputs.values():
            outputs.close()
        self._outputs = {}


def _panda_mat(world_from_optical: np.ndarray) -> Mat4:
    """A 4x4 world <- optical transform as a Panda3D camera matrix (row vectors: rows are the camera's
    x, y, z axes and its position in the world)."""
    R = world_from_optical[:3, :3] @ _OPTICAL_FROM_PANDA
    t = world_from_optical[:3, 3]
    return Mat4(*R[:, 0], 0.0, *R[:, 1], 0.0, *R[:, 2], 0.0, *t, 1.0)
