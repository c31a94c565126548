"""Runs in the Ray job's driver: the entrypoint that builds and runs the TorchTrainer, and the keeper
of warm standby workers (whose count the CLI reads through warm.py too)."""
