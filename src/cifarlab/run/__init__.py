"""The run directory: configuration file, checkpoints, status, lock, atomic writes, and
loading a trained run for eval, predict and export. Every command reads and writes a run
directory through this package only."""
