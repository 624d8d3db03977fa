"""The trainer, the library behind train.py: config (resolution and checks), setup (data, the built parts, --resume),
trainer (the epoch loop, validation, the summary), step (one training step, shared with bench.py), checkpoints
(files and the best/last/top-k saver), rundir (the run folder), distributed (DDP helpers), runstate (the typed run
state, random streams, stop signals), optimization, runlog and recipes."""
