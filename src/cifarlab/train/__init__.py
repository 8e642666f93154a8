"""Training: the step loop and its parts (schedules, averages, checkpoints, distributed)."""
