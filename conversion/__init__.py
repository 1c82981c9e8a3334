"""Weight conversion: rules as data (``engine``), one map per format and architecture (``maps``)."""
