"""Reading and writing: storage backends, corpus shards, target splits, safe names, leases, secrets."""
