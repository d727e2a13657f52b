"""Layer 1, imports nothing else of the package: decision vocabulary, trajectory maths, rewards, metrics, types."""
