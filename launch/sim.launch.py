"""Vehicle stack + the embedded highway simulator bridge, on sim time and in lockstep.

    ros2 launch vla_driver sim.launch.py scenario:=highway seed:=3 rig:=front  # rig: the checkpoint's cameras

The bridge publishes /clock and waits for each cycle's cmd_vel before stepping (synchronous mode).
Without ros2 launch, ``vla-driver demo`` composes the same four nodes in one process.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("vla_driver")
    return LaunchDescription([
        DeclareLaunchArgument("scenario", default_value="highway", description="simulator scenario"),
        DeclareLaunchArgument("seed", default_value="0", description="episode seed"),
        DeclareLaunchArgument("checkpoint", default_value="", description="checkpoint dir; empty = embedded"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto|torch|onnxruntime|tensorrt"),
        DeclareLaunchArgument("rig", default_value="front",
                              description="the checkpoint's camera rig (the embedded default's: front); empty = the top-down view"),
        DeclareLaunchArgument("sim_bridge_node_params",
                              default_value=os.path.join(share, "config", "sim_bridge_node.yaml")),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "vla_driver.launch.py")),
            launch_arguments={
                "use_sim_time": "true",
                "lockstep": "true",
                "checkpoint": LaunchConfiguration("checkpoint"),
                "backend": LaunchConfiguration("backend"),
                "rig": LaunchConfiguration("rig"),
            }.items(),
        ),
        Node(
            package="vla_driver", executable="sim_bridge_node", name="sim_bridge_node", output="screen",
            ros_arguments=["--enclave", "/vla_driver/sim_bridge_node"],  # SROS2 identity; inert with security off
            parameters=[
                LaunchConfiguration("sim_bridge_node_params"),
                {
                    "use_sim_time": True,
                    "scenario": ParameterValue(LaunchConfiguration("scenario"), value_type=str),
                    "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
                    "rig": ParameterValue(LaunchConfiguration("rig"), value_type=str),
                },
            ],
        ),
    ])
