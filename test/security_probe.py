"""One ROS participant in a process of its own, for test_security: security and the enclave come from the
environment and ``--ros-args``, as a launched node gets them. Prints one JSON line.

    python security_probe.py listen|talk NODE FRAME_ID SECONDS [--ros-args --enclave /vla_driver/<node>]

``listen`` counts the nav_msgs/Path messages on ``trajectory`` by header.frame_id (who sent them); ``talk``
publishes them stamped with FRAME_ID, ten a second. NODE is the node's name: an enclave's grant names the
node's parameter services, so a probe in the action node's enclave must be called action_node.
"""
import json
import sys
import time
from collections import Counter

import rclpy
from nav_msgs.msg import Path


def loaded_fast_dds() -> str:
    """The Fast DDS library this process runs on (the rmw loads it at rclpy.init)."""
    with open("/proc/self/maps") as maps:
        paths = (line.split()[-1] for line in maps)
        return next((path for path in paths if "libfastrtps.so" in path or "libfastdds.so" in path), "")


def exchange(role: str, name: str, frame_id: str, seconds: float) -> Counter:
    node = rclpy.create_node(name)
    received = Counter()
    if role == "listen":
        node.create_subscription(Path, "trajectory", lambda msg: received.update([msg.header.frame_id]), 10)
    else:
        publisher = node.create_publisher(Path, "trajectory", 10)
        message = Path()
        message.header.frame_id = frame_id
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if role == "talk":
            publisher.publish(message)
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    return received


def main() -> None:
    role, name, frame_id, seconds = sys.argv[1:5]
    try:
        rclpy.init(args=sys.argv)
        result = {"started": True, "received": exchange(role, name, frame_id, float(seconds))}
    except Exception as err:  # noqa: BLE001 - rclpy's RCLError: the outcome under test, reported
        result = {"started": False, "error": str(err)}
    result["fast_dds"] = loaded_fast_dds()
    print(json.dumps(result))
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
