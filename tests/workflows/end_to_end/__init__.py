"""End-to-end runs through the public paths (CLI, run_mixture_refresh): faults, S3, datastore, checkpoints."""
