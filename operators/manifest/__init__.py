"""Mixture manifests: the schema trainers consume and its file formats."""
