"""The trainer: the training step, optimisers and schedules, checkpoints, run logs, run state and recipes."""
