"""Workflows composing the influmix operators: config, plans, refresh workflows and the CLI."""
