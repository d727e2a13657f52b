"""Layer 2: the VLA model (vision encoder, Qwen2 with decision and action LoRA adapters), tokenizer, checkpoints."""
