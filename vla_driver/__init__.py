"""vla_driver: a ROS 2 runtime that drives with a Vision-Language-Action model."""

__version__ = "0.1.0"
