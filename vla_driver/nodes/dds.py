"""The Fast DDS profile every vla_driver process runs with (``config/fastdds.xml``; the file says why)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"
PROFILE_NAME = "fastdds.xml"


def profile_path() -> Path | None:
    """The profile in the source tree, else in an installed share folder (pip's or colcon's)."""
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME,
                  *(Path(p) / "share" / "vla_driver" / "config" / PROFILE_NAME for p in prefixes)]
    return next((p for p in candidates if p.is_file()), None)


def use_profile(env: dict | None = None) -> dict:
    """Point ``env`` (default: this process's environment, before its first ROS participant) at the profile,
    unless a profile is set there already: the user's choice stands."""
    env = os.environ if env is None else env
    path = profile_path()
    if path is not None and not env.get(PROFILE_ENV):
        env[PROFILE_ENV] = str(path)
    return env
