"""Runs in the fleet's controller: hangs, notices, jobs that lost their driver, goodput. The job
history (history.py) is appended to by every runtime and read by the controller and the CLI."""
