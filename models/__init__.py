"""Model weights: where they live, how the tiny ones are built and the full ones pulled."""
