"""Files on disk: experiment configs, run directories, checkpoints and atomic writes."""
