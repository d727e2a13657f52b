"""Launch files and parameter files checked without ``ros2 launch`` (not installable here).

Launch files are parsed with ``ast``; parameter yamls are parsed by rcl itself (rclpy ``--params-file``)
and compared with the node's params dataclass, which is what the node declares.
"""
import ast
import json
import os
from dataclasses import fields
from pathlib import Path

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
DOMAIN_ID = 142  # distinct from the other ROS test files

import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402

from vla_driver.nodes.action_node import ActionNode, ActionParams  # noqa: E402
from vla_driver.nodes.controller_node import ControllerNode, ControllerParams  # noqa: E402
from vla_driver.nodes.decision_node import DecisionNode, DecisionParams  # noqa: E402
from vla_driver.nodes.logger_node import LoggerNode, LoggerParams  # noqa: E402
from vla_driver.nodes.security import NODE_TOPICS, enclave_path  # noqa: E402
from vla_driver.nodes.sim_bridge_node import SimBridgeNode, SimBridgeParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODES = {  # node name == executable name
    "decision_node": (DecisionNode, DecisionParams),
    "action_node": (ActionNode, ActionParams),
    "controller_node": (ControllerNode, ControllerParams),
    "sim_bridge_node": (SimBridgeNode, SimBridgeParams),
    "logger_node": (LoggerNode, LoggerParams),
}
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
YAML_TYPES = {bool: bool, int: int, float: float, str: str, tuple: list}


def declared(name: str) -> set[str]:
    """Parameters the node declares: its dataclass fields plus rclpy's own use_sim_time."""
    return {f.name for f in fields(NODES[name][1])} | {"use_sim_time"}


def console_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [e.value for e in value.elts]
                    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py has no console_scripts")


def call_name(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


def calls(tree, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and call_name(n) == name]


def kwarg(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def strings(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def declared_arguments(tree) -> dict[str, ast.Call]:
    return {c.args[0].value: c for c in calls(tree, "DeclareLaunchArgument")}


def resolve_dict(tree, node) -> ast.Dict | None:
    """A dict literal, or a variable assigned one in the same file."""
    if isinstance(node, ast.Dict):
        return node
    if isinstance(node, ast.Name):
        for a in ast.walk(tree):
            if isinstance(a, ast.Assign) and any(getattr(t, "id", None) == node.id for t in a.targets):
                return a.value if isinstance(a.value, ast.Dict) else None
    return None


def parse(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(f, ast.FunctionDef) and f.name == "generate_launch_description" for f in tree.body)
    return tree


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_nodes_are_console_scripts_with_declared_parameters_and_topics(path):
    tree, scripts = parse(path), console_scripts()
    args = declared_arguments(tree)
    for node in calls(tree, "Node"):
        assert kwarg(node, "package").value == "vla_driver"
        executable, name = kwarg(node, "executable").value, kwarg(node, "name").value
        assert executable in scripts, f"{path.name}: {executable} is not a console_script"
        node_cls, _ = NODES[name]
        assert scripts[executable] == f"{node_cls.__module__}:main"
        for entry in kwarg(node, "parameters").elts:
            as_dict = resolve_dict(tree, entry)
            if as_dict is not None:
                keys = {k.value for k in as_dict.keys}
                assert keys <= declared(name), f"{path.name}: {name} does not declare {keys - declared(name)}"
            else:  # a params-file launch argument whose default is config/<name>.yaml
                assert call_name(entry) == "LaunchConfiguration"
                yamls = [s for s in strings(kwarg(args[entry.args[0].value], "default_value")) if s.endswith(".yaml")]
                assert yamls == [f"{name}.yaml"] and (ROOT / "config" / yamls[0]).is_file()
        remappings = kwarg(node, "remappings")
        for pair in remappings.elts if remappings is not None else []:
            assert pair.elts[0].value in node_cls.TOPICS, f"{name} has no topic {pair.elts[0].value!r}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_configurations_and_includes_use_declared_arguments(path):
    tree = parse(path)
    args = declared_arguments(tree)
    used = {c.args[0].value for c in calls(tree, "LaunchConfiguration")}
    assert used <= set(args), f"{path.name}: undeclared launch arguments {used - set(args)}"
    for include in calls(tree, "IncludeLaunchDescription"):
        [target] = [s for s in strings(include.args[0]) if s.endswith(".launch.py")]
        included_args = set(declared_arguments(parse(ROOT / "launch" / target)))
        passed = {k.value for k in kwarg(include, "launch_arguments").func.value.keys}
        assert passed <= included_args, f"{target} does not declare {passed - included_args}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_node_runs_in_its_own_enclave_of_the_keystore(path):
    """``--enclave /vla_driver/<node>``: the identity and grant ``vla-driver keystore create`` writes for it."""
    for node in calls(parse(path), "Node"):
        name, ros_arguments = kwarg(node, "name").value, kwarg(node, "ros_arguments")
        assert ros_arguments is not None, f"{path.name}: {name} runs without an enclave"
        assert [a.value for a in ros_arguments.elts] == ["--enclave", enclave_path(name)], path.name
        assert name in NODE_TOPICS, f"{path.name}: the keystore has no enclave for {name}"


def test_the_keystore_has_an_enclave_for_exactly_the_launched_nodes():
    launched = {kwarg(node, "name").value for path in LAUNCH_FILES for node in calls(parse(path), "Node")}
    assert launched == set(NODE_TOPICS)


def test_every_topic_of_the_vehicle_stack_is_remappable():
    tree = parse(ROOT / "launch" / "vla_driver.launch.py")
    for node in calls(tree, "Node"):
        name = kwarg(node, "name").value
        node_cls, _ = NODES[name]
        if name == "logger_node":  # subscribes by <role>_topic parameters, fed from the same launch arguments
            params = resolve_dict(tree, kwarg(node, "parameters").elts[1])
            passed = {k.value for k in params.keys if k.value.endswith("_topic")}
            assert passed == {f"{t}_topic" for t in ("image", "odom", "navigation", "decision", "trajectory",
                                                     "cmd_vel")}
            continue
        remapped = {pair.elts[0].value for pair in kwarg(node, "remappings").elts}
        assert remapped == set(node_cls.TOPICS)


def test_carla_launch_remaps_to_the_carla_ros_bridge_topics():
    tree = parse(ROOT / "launch" / "carla.launch.py")
    [include] = calls(tree, "IncludeLaunchDescription")
    passed = kwarg(include, "launch_arguments").func.value
    values = {k.value: v.value for k, v in zip(passed.keys, passed.values, strict=True) if isinstance(v, ast.Constant)}
    assert values["image_topic"] == "/carla/ego_vehicle/rgb_front/image"
    assert values["camera_front_topic"] == "/carla/ego_vehicle/rgb_front/image"  # the front rig's camera
    assert values["odom_topic"] == "/carla/ego_vehicle/odometry"
    assert values["cmd_vel_topic"] == "/carla/ego_vehicle/twist"
    assert values["use_sim_time"] == "true"


@pytest.fixture()
def context():
    ctx = rclpy.Context()
    yield ctx
    rclpy.try_shutdown(context=ctx)


@pytest.mark.parametrize("name", sorted(NODES))
def test_config_yaml_is_parsed_by_rcl_into_exactly_the_declared_parameters(name, context):
    path = ROOT / "config" / f"{name}.yaml"
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context, domain_id=DOMAIN_ID)
    node = Node(name, context=context, automatically_declare_parameters_from_overrides=True)
    bare = Node("no_overrides", context=context)  # what rclpy declares on every node (use_sim_time, ...)
    try:
        from_yaml = {n: node.get_parameter(n).value for n in set(node._parameters) - set(bare._parameters)}
    finally:
        node.destroy_node()
        bare.destroy_node()
    defaults = {f.name: f.default for f in fields(NODES[name][1])}
    assert set(from_yaml) == set(defaults)
    for key, value in from_yaml.items():  # rclpy refuses an override of another type than the default
        assert type(value) is YAML_TYPES[type(defaults[key])], f"{name}.{key}: {value!r}"


@pytest.mark.parametrize("name", sorted(NODES))
def test_json_schema_matches_the_declared_parameters(name):
    schema = json.loads((ROOT / "config" / "schema" / f"{name}.schema.json").read_text())
    props = schema["definitions"]["params"]["properties"]
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "array"}
    expected = {f.name: (kinds[type(f.default)], list(f.default) if isinstance(f.default, tuple) else f.default,
                         f.metadata["description"]) for f in fields(NODES[name][1])}
    assert {k: (v["type"], v["default"], v["description"]) for k, v in props.items()} == expected
    positive = set(getattr(NODES[name][1], "POSITIVE", ()))
    assert {k for k, v in props.items() if v.get("exclusiveMinimum") == 0} == positive
