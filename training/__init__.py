"""Trainer-level code: the step, callbacks, training checkpoints and the run folder (above methods/ and eval/)."""
