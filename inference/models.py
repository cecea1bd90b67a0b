"""Models of the inference app (each defined in the module of its concept)."""

from .jobs.models import InferenceJob
from .keys import APIKey
from .monitoring.models import RequestRecord, RequestRollup, ShadowRollup

__all__ = ["APIKey", "InferenceJob", "RequestRecord", "RequestRollup", "ShadowRollup"]
