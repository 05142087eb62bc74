"""Run-level state on storage: the shard plan, pinned inputs, the run lease, integrity checks, chaos hooks."""
