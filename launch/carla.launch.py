"""Vehicle stack on CARLA through the CARLA-ROS bridge (carla-simulator/ros-bridge), on sim time.

Start the bridge first, in synchronous mode, with an ego vehicle whose front camera is "rgb_front",
and its Twist-to-control converter (it reads /carla/<role_name>/twist):

    ros2 launch carla_ros_bridge carla_ros_bridge_with_example_ego_vehicle.launch.py synchronous_mode:=true
    ros2 launch carla_twist_to_control carla_twist_to_control.launch.py
    ros2 launch vla_driver carla.launch.py

CARLA has no route instruction topic: publish one on /carla/ego_vehicle/navigation (std_msgs/String)
or the nodes use their default_navigation parameter.

With SROS2 the keystore's grants must name the topics below (`vla-driver keystore create --remap`, see
docs/design.md#sros2), and the bridge needs an enclave of its own.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


def generate_launch_description():
    share = get_package_share_directory("vla_driver")
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", default_value="", description="checkpoint dir; empty = embedded"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto|torch|onnxruntime|tensorrt"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "vla_driver.launch.py")),
            launch_arguments={
                "use_sim_time": "true",
                "checkpoint": LaunchConfiguration("checkpoint"),
                "backend": LaunchConfiguration("backend"),
                "image_topic": "/carla/ego_vehicle/rgb_front/image",
                "camera_front_topic": "/carla/ego_vehicle/rgb_front/image",  # bgra8 800x600: the front rig
                "odom_topic": "/carla/ego_vehicle/odometry",
                "navigation_topic": "/carla/ego_vehicle/navigation",
                "decision_topic": "/vla_driver/decision",
                "trajectory_topic": "/vla_driver/trajectory",
                "trajectory_markers_topic": "/vla_driver/trajectory_markers",
                "cmd_vel_topic": "/carla/ego_vehicle/twist",
            }.items(),
        ),
    ])
