"""Training loops, optimisation, checkpoints and logging."""
