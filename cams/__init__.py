"""cams: class activation maps from one shared hooks-and-weights pass (torch only)."""
