"""pytest plugin (placeholder while building)."""
