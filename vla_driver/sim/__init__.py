"""Layer 4 (beside experience): the embedded highway-env simulator, its expert driver and SFT data."""
