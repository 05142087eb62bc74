"""Everything Ray-specific: cluster start, GPU-pinned actor pools, metrics, job submission."""
