"""Layer 5: the ROS 2 nodes, thin adapters over the layers below; each runs standalone via its ``main()``."""
