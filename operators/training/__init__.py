"""Short training from a checkpoint: exact mixture blends and probes."""
