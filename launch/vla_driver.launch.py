"""Vehicle stack: decision, action and controller nodes.

    ros2 launch vla_driver vla_driver.launch.py image_topic:=/camera/front/image_raw checkpoint:=/path/ckpt

Parameters come from config/<node>.yaml in the package share (replace a file with
<node>_params:=/path.yaml); the launch arguments below override those files. Every topic is remappable.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    config = os.path.join(get_package_share_directory("vla_driver"), "config")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    lockstep = ParameterValue(LaunchConfiguration("lockstep"), value_type=bool)
    policy = {
        "use_sim_time": use_sim_time,
        "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
        "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
    }
    return LaunchDescription([
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("lockstep", default_value="false",
                              description="plan per image and command per trajectory (synchronous simulator)"),
        DeclareLaunchArgument("checkpoint", default_value="", description="checkpoint dir; empty = embedded"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto|torch|onnxruntime|tensorrt"),
        DeclareLaunchArgument("decision_node_params", default_value=os.path.join(config, "decision_node.yaml")),
        DeclareLaunchArgument("action_node_params", default_value=os.path.join(config, "action_node.yaml")),
        DeclareLaunchArgument("controller_node_params", default_value=os.path.join(config, "controller_node.yaml")),
        DeclareLaunchArgument("logger_node_params", default_value=os.path.join(config, "logger_node.yaml")),
        DeclareLaunchArgument("log", default_value="true", description="record experience segments (logger_node)"),
        DeclareLaunchArgument("rig", default_value="front",
                              description="the checkpoint's camera rig, for the logger to record its cameras (the embedded default's: front)"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="the one camera of a top-down model (no rig), sensor_msgs/Image"),
        DeclareLaunchArgument("camera_front_topic", default_value="camera/front/image_raw",
                              description="rig camera front, sensor_msgs/Image"),
        DeclareLaunchArgument("camera_front_left_topic", default_value="camera/front_left/image_raw",
                              description="rig camera front_left, sensor_msgs/Image"),
        DeclareLaunchArgument("camera_front_right_topic", default_value="camera/front_right/image_raw",
                              description="rig camera front_right, sensor_msgs/Image"),
        DeclareLaunchArgument("camera_back_topic", default_value="camera/back/image_raw",
                              description="rig camera back, sensor_msgs/Image"),
        DeclareLaunchArgument("camera_back_left_topic", default_value="camera/back_left/image_raw",
                              description="rig camera back_left, sensor_msgs/Image"),
        DeclareLaunchArgument("camera_back_right_topic", default_value="camera/back_right/image_raw",
                              description="rig camera back_right, sensor_msgs/Image"),
        DeclareLaunchArgument("odom_topic", default_value="odom", description="nav_msgs/Odometry"),
        DeclareLaunchArgument("navigation_topic", default_value="navigation",
                              description="route instruction, std_msgs/String"),
        DeclareLaunchArgument("decision_topic", default_value="decision", description="decision JSON"),
        DeclareLaunchArgument("trajectory_topic", default_value="trajectory", description="nav_msgs/Path, ego"),
        DeclareLaunchArgument("trajectory_markers_topic", default_value="trajectory_markers",
                              description="visualization_msgs/MarkerArray for RViz"),
        DeclareLaunchArgument("cmd_vel_topic", default_value="cmd_vel", description="geometry_msgs/Twist"),
        Node(
            package="vla_driver", executable="decision_node", name="decision_node", output="screen",
            ros_arguments=["--enclave", "/vla_driver/decision_node"],  # SROS2 identity; inert with security off
            parameters=[LaunchConfiguration("decision_node_params"), policy],
            remappings=[
                ("image", LaunchConfiguration("image_topic")),
                ("camera/front/image_raw", LaunchConfiguration("camera_front_topic")),
                ("camera/front_left/image_raw", LaunchConfiguration("camera_front_left_topic")),
                ("camera/front_right/image_raw", LaunchConfiguration("camera_front_right_topic")),
                ("camera/back/image_raw", LaunchConfiguration("camera_back_topic")),
                ("camera/back_left/image_raw", LaunchConfiguration("camera_back_left_topic")),
                ("camera/back_right/image_raw", LaunchConfiguration("camera_back_right_topic")),
                ("odom", LaunchConfiguration("odom_topic")),
                ("navigation", LaunchConfiguration("navigation_topic")),
                ("decision", LaunchConfiguration("decision_topic")),
            ],
        ),
        Node(
            package="vla_driver", executable="action_node", name="action_node", output="screen",
            ros_arguments=["--enclave", "/vla_driver/action_node"],  # SROS2 identity; inert with security off
            parameters=[LaunchConfiguration("action_node_params"), policy, {"plan_on_image": lockstep}],
            remappings=[
                ("image", LaunchConfiguration("image_topic")),
                ("camera/front/image_raw", LaunchConfiguration("camera_front_topic")),
                ("camera/front_left/image_raw", LaunchConfiguration("camera_front_left_topic")),
                ("camera/front_right/image_raw", LaunchConfiguration("camera_front_right_topic")),
                ("camera/back/image_raw", LaunchConfiguration("camera_back_topic")),
                ("camera/back_left/image_raw", LaunchConfiguration("camera_back_left_topic")),
                ("camera/back_right/image_raw", LaunchConfiguration("camera_back_right_topic")),
                ("odom", LaunchConfiguration("odom_topic")),
                ("navigation", LaunchConfiguration("navigation_topic")),
                ("decision", LaunchConfiguration("decision_topic")),
                ("trajectory", LaunchConfiguration("trajectory_topic")),
                ("trajectory_markers", LaunchConfiguration("trajectory_markers_topic")),
            ],
        ),
        Node(
            package="vla_driver", executable="controller_node", name="controller_node", output="screen",
            ros_arguments=["--enclave", "/vla_driver/controller_node"],  # SROS2 identity; inert with security off
            parameters=[
                LaunchConfiguration("controller_node_params"),
                {"use_sim_time": use_sim_time, "publish_on_trajectory": lockstep},
            ],
            remappings=[
                ("trajectory", LaunchConfiguration("trajectory_topic")),
                ("odom", LaunchConfiguration("odom_topic")),
                ("cmd_vel", LaunchConfiguration("cmd_vel_topic")),
            ],
        ),
        Node(
            package="vla_driver", executable="logger_node", name="logger_node", output="screen",
            ros_arguments=["--enclave", "/vla_driver/logger_node"],  # SROS2 identity; inert with security off
            condition=IfCondition(LaunchConfiguration("log")),
            parameters=[
                LaunchConfiguration("logger_node_params"),
                {"use_sim_time": use_sim_time,
                 "image_topic": LaunchConfiguration("image_topic"),
                 "odom_topic": LaunchConfiguration("odom_topic"),
                 "navigation_topic": LaunchConfiguration("navigation_topic"),
                 "decision_topic": LaunchConfiguration("decision_topic"),
                 "trajectory_topic": LaunchConfiguration("trajectory_topic"),
                 "cmd_vel_topic": LaunchConfiguration("cmd_vel_topic"),
                 "rig": ParameterValue(LaunchConfiguration("rig"), value_type=str)},
            ],
            remappings=[
                ("camera/front/image_raw", LaunchConfiguration("camera_front_topic")),
                ("camera/front_left/image_raw", LaunchConfiguration("camera_front_left_topic")),
                ("camera/front_right/image_raw", LaunchConfiguration("camera_front_right_topic")),
                ("camera/back/image_raw", LaunchConfiguration("camera_back_topic")),
                ("camera/back_left/image_raw", LaunchConfiguration("camera_back_left_topic")),
                ("camera/back_right/image_raw", LaunchConfiguration("camera_back_right_topic")),
            ],
        ),
    ])
