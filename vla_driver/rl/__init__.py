"""Layer 7: improving the model: SFT, offline refresh, online GRPO in the simulator, the gate and promotion."""
