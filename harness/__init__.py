"""The harness: GLUE tasks and data, models, the one training loop, runs, the grid and the tables."""
