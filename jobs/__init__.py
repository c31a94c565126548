"""Training jobs, one folder per runtime the code runs in: client/ (the CLI's process), driver/ (the
Ray job's driver), worker/ (Ray Train's worker processes) and supervision/ (the fleet's controller,
and the readers of a job's history). contract.py holds what these processes hand each other."""
