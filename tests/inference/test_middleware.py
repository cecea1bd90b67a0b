"""The platform's middleware: messages only where a person reads them."""

from __future__ import annotations

from django.contrib.messages.storage.base import BaseStorage
from django.http import HttpResponse
from django.test import RequestFactory

from inference.middleware import MessageMiddleware


def _seen(path: str) -> object:
    seen = {}

    def view(request):
        seen["messages"] = getattr(request, "_messages", None)
        return HttpResponse("ok")

    request = RequestFactory().get(path)
    request.session = {}
    MessageMiddleware(view)(request)
    return seen["messages"]


def test_api_requests_get_no_message_storage():
    assert _seen("/api/v1/models/iris/predict") is None
    assert _seen("/v2/models/iris/infer") is None


def test_admin_requests_keep_messages():
    assert isinstance(_seen("/admin/"), BaseStorage)
