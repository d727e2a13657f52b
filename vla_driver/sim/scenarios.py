"""The scenes the embedded simulator offers (highway-env environment ids) and their default episode
lengths: a light module, so that option parsers and configs can name scenarios without loading the simulator."""
from __future__ import annotations

SCENARIOS = {
    "highway": "highway-fast-v0",
    "merge": "merge-v0",
    "roundabout": "roundabout-v0",
    "intersection": "intersection-v0",
}
DEFAULT_DURATION_S = {"highway": 30.0, "merge": 20.0, "roundabout": 30.0, "intersection": 25.0}
