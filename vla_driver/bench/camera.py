"""Closed-loop cost of perspective cameras: step the simulator and render every camera of a rig at the
model's input size each step, as a rollout with camera observations does.

``realtime_factor`` is simulated seconds per wall second with all cameras rendered (sim step + render);
above 1 the embedded simulator outruns a real car.
"""
from __future__ import annotations

import time

import numpy as np

from ..core.camera_rig import load_rig
from ..sim.camera_render import CameraRenderer
from ..sim.highway import DrivingSim
from . import emit, percentiles


def run_camera_bench(rig_name: str = "front3", steps: int = 200, scenario: str = "highway", seed: int = 0,
                     speed_cmd: float = 20.0, yaw_rate_cmd: float = 0.0) -> dict:
    rig = load_rig(rig_name)
    sim = DrivingSim(scenario, seed=seed, duration_s=1e9)  # no timeout inside the run
    renderer = CameraRenderer(rig)
    renderer.render_model_inputs(sim.env.road, sim.vehicle)  # buffers and road geometry, once
    render_ms, step_ms = np.empty(steps), np.empty(steps)
    start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        sim.step(speed_cmd, yaw_rate_cmd)
        t1 = time.perf_counter()
        renderer.render_model_inputs(sim.env.road, sim.vehicle)
        t2 = time.perf_counter()
        step_ms[i], render_ms[i] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        if sim.done:  # a crash ends the episode: start another one, as a rollout worker would
            sim.reset(seed + i + 1)
    wall = time.perf_counter() - start
    renderer.close()
    sim.close()
    record = {"bench": "camera", "rig": rig.name, "cameras": len(rig.cameras), "width": rig.model_width,
              "height": rig.model_height, "scenario": scenario, "steps": steps,
              "render_ms_p50": percentiles(render_ms)["p50"], "render_ms_p99": percentiles(render_ms)["p99"],
              "sim_step_ms_p50": percentiles(step_ms)["p50"],
              "realtime_factor": steps * sim.dt / wall}
    emit(record)
    return record

