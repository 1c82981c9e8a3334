"""Shared building blocks with no model-family knowledge."""
