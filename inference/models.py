"""Models of the inference app (each defined in the module of its concept)."""

from .keys import APIKey

__all__ = ["APIKey"]
