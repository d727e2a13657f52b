"""Node parameters declared from a dataclass: its fields are the one list of names, defaults and docs.

Each node keeps a ``*Params`` dataclass whose fields are made with :func:`param`. :func:`declare_params`
declares every field on the node (read-only: nodes read them once at start) and returns a filled
instance; the config yamls and launch files are checked against the same fields by the tests.
"""
from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import TypeVar

from rcl_interfaces.msg import ParameterDescriptor

T = TypeVar("T")


def param(default, description: str):
    """A dataclass field that is also a ROS parameter with this default and description."""
    return field(default=default, metadata={"description": description})


def param_defaults(params_cls) -> dict:
    """``{name: default}`` of every parameter the dataclass declares."""
    return {f.name: f.default for f in fields(params_cls) if f.default is not MISSING}


def declare_params(node, params_cls: type[T]) -> T:
    """Declare every field of ``params_cls`` on ``node`` and return the values in effect.

    Overrides (yaml, launch, command line) must have the declared type; rclpy rejects e.g. ``2``
    for a float parameter. The dataclass's ``__post_init__`` validates ranges.
    """
    values = {}
    for f in fields(params_cls):
        descriptor = ParameterDescriptor(description=f.metadata.get("description", ""), read_only=True)
        values[f.name] = node.declare_parameter(f.name, f.default, descriptor).value
    return params_cls(**values)


def require_positive(params, *names: str) -> None:
    """Raise ValueError naming the first parameter that is not > 0."""
    for name in names:
        if not getattr(params, name) > 0:
            raise ValueError(f"parameter {name} must be > 0, got {getattr(params, name)!r}")
