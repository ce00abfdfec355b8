"""Reproducibility: the content store, component versions, run provenance, models."""
