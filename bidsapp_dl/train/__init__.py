"""Training: passes, the per-split trainer with checkpoints and resume, the train stage."""
