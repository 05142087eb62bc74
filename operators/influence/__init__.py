"""Group influence: preconditioners, per-domain aggregation, normalisation and bootstrap."""
