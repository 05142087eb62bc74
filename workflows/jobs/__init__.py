"""Work that runs inside Ray workers, one shard or one batch of examples at a time."""
