"""Node parameters declared from a dataclass: its fields are the one list of names, defaults and docs.

Each node keeps a ``*Params`` dataclass whose fields are made with :func:`param`. :func:`declare_params`
declares every field on the node (read-only: nodes read them once at start) and returns a filled
instance; the config yamls and launch files are checked against the same fields by the tests.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from typing import TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

T = TypeVar("T")


def param(default, description: str):
    """A dataclass field that is also a ROS parameter with this default and description."""
    return field(default=default, metadata={"description": description})


def param_defaults(params_cls) -> dict:
    """``{name: default}`` of every parameter the dataclass declares."""
    return {f.name: f.default for f in fields(params_cls) if f.default is not MISSING}


class ParameterValueError(ValueError):
    """A parameter value the node cannot run with: the node does not start and says so in one line."""


def declare_params(node, params_cls: type[T]) -> T:
    """Declare every field of ``params_cls`` on ``node`` and return the values in effect.

    Overrides (yaml, launch, command line) must have the declared type; rclpy rejects e.g. ``2``
    for a float parameter. The fields the class lists in ``POSITIVE`` carry a range in their descriptor
    (``ros2 param describe`` shows it; ROS ranges are inclusive, so ``__post_init__`` refuses 0 itself).
    """
    positive = set(getattr(params_cls, "POSITIVE", ()))
    values = {}
    for f in fields(params_cls):
        descriptor = ParameterDescriptor(description=f.metadata.get("description", ""), read_only=True)
        if f.name in positive and isinstance(f.default, int):
            descriptor.integer_range = [IntegerRange(from_value=1, to_value=2**63 - 1, step=1)]
        elif f.name in positive:
            descriptor.floating_point_range = [FloatingPointRange(from_value=0.0, to_value=math.inf, step=0.0)]
        try:
            values[f.name] = node.declare_parameter(f.name, f.default, descriptor).value
        except (InvalidParameterValueException, InvalidParameterTypeException) as err:
            raise ParameterValueError(f"parameter {f.name}: {err}") from None
    return params_cls(**values)


def require_positive(params, *names: str) -> None:
    """Raise ParameterValueError naming the first parameter that is not > 0."""
    for name in names:
        if not getattr(params, name) > 0:
            raise ParameterValueError(f"parameter {name} must be > 0, got {getattr(params, name)!r}")
