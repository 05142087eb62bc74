"""The stages of a refresh, one module each: featurize, aggregate, problem, validate, MATES, report, publish."""
