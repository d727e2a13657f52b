"""Layer 6: harnesses that run the real ROS nodes: the closed loop in one process, bag replay, the demo."""
