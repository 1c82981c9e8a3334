"""One weight map per (source format, architecture)."""
