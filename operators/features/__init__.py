"""Per-example gradient features: seeded projections, the featurizer and the feature datastore."""
