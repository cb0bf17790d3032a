"""Training: the loop that fits a model family on pairs."""
