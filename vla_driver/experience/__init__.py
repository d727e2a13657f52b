"""Layer 4 (beside sim): the experience format: rosbag2 MCAP segments, messages, reading samples, repair."""
