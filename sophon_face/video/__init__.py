"""Video devices: frame sources, readers, tracking and best-shot selection (issue: video)."""
