"""Model runtimes, the per-process cache of loaded versions, and dynamic batching."""
