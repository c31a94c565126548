"""Runs in Ray Train's worker processes: the training loop and what it needs. The driver reads the
checkpoints (checkpoint.py); the CLI and the controller read what progress.py and notices.py publish."""
