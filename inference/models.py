"""Models of the inference app (each defined in the module of its concept)."""

from .jobs.models import InferenceJob
from .keys import APIKey

__all__ = ["APIKey", "InferenceJob"]
