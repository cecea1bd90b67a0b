"""Serving: runtime, pipeline, batching, APIs, jobs, keys and monitoring."""
