"""Mixture testbed: train on candidate mixtures from a checkpoint and score the held-out test split."""
