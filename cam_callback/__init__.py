"""cam_callback: watch where an image model looks while it trains (Lightning callback)."""
