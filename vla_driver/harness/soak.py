"""The soak: the closed loop on the embedded simulator through the nodes as the car runs them (decision, action,
controller and logger processes, as ``sim.launch.py`` starts them), episodes back to back for ``minutes``.
A simulator bridge process drives each episode (the four scenarios in turn, a new seed each) and is replaced
for the next; the nodes live through them all, sim time starting over each time. Reported: episodes, cycles,
missed cycles, fallbacks, node crashes, RSS of every node process (peak and final, and its growth from the
first sample after ``WARM_UP_S`` to the end: ``rss_growth_pct``, the largest of any node), logger bytes and
drops."""
from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import psutil
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String
from tqdm import tqdm

from ..nodes.dds import use_profile
from .faults import NodeProcess, node_env

SCENARIOS = ("highway", "merge", "roundabout", "intersection")
EPISODE_S = 20.0  # sim seconds per episode
RSS_PERIOD_S = 2.0
WARM_UP_S = 120.0  # RSS growth counts from here (what a process allocates once has been allocated by then)


def run_soak(minutes: float, work: str | Path | None = None, domain_id: int = 195, progress: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="vla-soak-") as tmp:
        work = Path(work) if work else Path(tmp)
        return _Soak(work, domain_id).run(minutes * 60.0, progress)


class _Soak:
    def __init__(self, work: Path, domain_id: int):
        self.work, self.logs = work, work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        use_profile()
        self.env = node_env(domain_id)
        sim = {"use_sim_time": True}
        self.nodes = {
            "decision_node": NodeProcess("decision_node", {**sim, "backend": "onnxruntime"}, self.env, self.logs),
            "action_node": NodeProcess("action_node", {**sim, "backend": "onnxruntime", "plan_on_image": True},
                                       self.env, self.logs),
            "controller_node": NodeProcess("controller_node", {**sim, "publish_on_trajectory": True}, self.env,
                                           self.logs),
            "logger_node": NodeProcess("logger_node", {**sim, "output_dir": str(work / "bags"), "min_free_mb": 0.0},
                                       self.env, self.logs),
        }
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("soak_monitor", context=self.context)
        self.lock = threading.Lock()
        self.episodes: list[dict] = []
        self.counters: dict[str, dict[str, str]] = {}  # node -> its latest diagnostics values
        self.node.create_subscription(String, "episode", self._on_episode,
                                      QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._spin.start()
        self.rss: dict[str, list[tuple[float, float]]] = {name: [] for name in self.nodes}  # (s into the soak, MB)
        self.start = time.monotonic()

    def _spin_loop(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_episode(self, msg) -> None:
        with self.lock:
            self.episodes.append(json.loads(msg.data))

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            for s in msg.status:
                self.counters[s.name.split(": ")[-1]] = {kv.key: kv.value for kv in s.values}

    def _sample_rss(self) -> None:
        for name, proc in self.nodes.items():
            if proc.alive():
                try:
                    self.rss[name].append((time.monotonic() - self.start,
                                           psutil.Process(proc.proc.pid).memory_info().rss / 2**20))
                except psutil.Error:
                    pass

    def _episode(self, k: int) -> dict | None:
        """One episode with a fresh bridge process; its result, or None when it never finished."""
        params = {"use_sim_time": True, "scenario": SCENARIOS[k % len(SCENARIOS)], "seed": 1000 + k,
                  "duration_s": EPISODE_S}
        with self.lock:
            before = len(self.episodes)
        bridge = NodeProcess("sim_bridge_node", params, self.env, self.logs)
        deadline, next_rss = time.monotonic() + 600.0, 0.0
        try:
            while time.monotonic() < deadline and bridge.alive():
                with self.lock:
                    if len(self.episodes) > before:
                        return self.episodes[-1]
                if time.monotonic() >= next_rss and k > 0:  # after the first episode: warmed up
                    self._sample_rss()
                    next_rss = time.monotonic() + RSS_PERIOD_S
                time.sleep(0.1)
            return None
        finally:
            bridge.stop()

    def run(self, seconds: float, progress: bool) -> dict:
        start = self.start = time.monotonic()
        k, failed = 0, 0
        bar = tqdm(total=round(seconds), unit="s", desc="soak", disable=not progress)
        try:
            while time.monotonic() - start < seconds:
                if self._episode(k) is None:
                    failed += 1
                k += 1
                bar.n = min(round(time.monotonic() - start), bar.total)
                bar.refresh()
            self._sample_rss()
            crashed = [name for name, proc in self.nodes.items() if not proc.alive()]
            time.sleep(1.5)  # the last diagnostics
            with self.lock:
                episodes, counters = list(self.episodes), dict(self.counters)
        finally:
            bar.close()
            self._stop.set()
            self._spin.join(timeout=5.0)
            for proc in self.nodes.values():
                proc.stop()
            self.executor.shutdown()
            self.node.destroy_node()
            rclpy.try_shutdown(context=self.context)
        extras = [e.get("extras", {}) for e in episodes]
        logger = counters.get("logger_node", {})
        action = counters.get("action_node", {})
        return {
            "bench": "soak", "minutes": round((time.monotonic() - start) / 60.0, 2), "episodes": len(episodes),
            "episodes_unfinished": failed, "cycles": sum(int(x.get("cycles", 0)) for x in extras),
            "missed_cycles": sum(int(x.get("missed_cycles", 0)) for x in extras),
            "start_retries": sum(int(x.get("start_retries", 0)) for x in extras),
            "fallbacks": int(action.get("fallbacks", 0)), "crashes": len(crashed), "crashed": crashed,
            "rss_mb": {name: _rss_figures(v) for name, v in self.rss.items() if v},
            "rss_growth_pct": max((_rss_figures(v)["growth_pct"] for v in self.rss.values() if v), default=None),
            "logger_written": int(logger.get("written", 0)), "logger_dropped": int(logger.get("dropped", 0)),
            "driving_score_mean": round(sum(float(e.get("driving_score", 0.0)) for e in episodes)
                                        / max(1, len(episodes)), 3),
        }


def _rss_figures(samples: list[tuple[float, float]]) -> dict:
    """Peak and final RSS (MB), and the growth from the first sample after the warm-up (or the first sample of a
    shorter soak) to the final one."""
    mb = [v for _, v in samples]
    base = next((v for t, v in samples if t >= WARM_UP_S), mb[0])
    return {"first": round(mb[0], 1), "after_warm_up": round(base, 1), "peak": round(max(mb), 1),
            "final": round(mb[-1], 1), "growth_pct": round((mb[-1] - base) / base * 100.0, 2)}
