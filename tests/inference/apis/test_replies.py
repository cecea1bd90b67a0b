"""apis.replies: a view's Reply, and the Django response of it (what WSGI and Django's handler send)."""

from __future__ import annotations

import asyncio

import numpy as np
from django.http import HttpResponse

from inference.apis.replies import Reply, api_view, json_reply


def test_a_reply_becomes_the_django_response_it_stands_for():
    reply = json_reply({"x": np.float32(0.5), "y": np.arange(2)}, 429, {"Retry-After": "3"})
    assert reply.headers == [("Content-Type", "application/json"), ("Retry-After", "3")]
    response = reply.http_response()
    assert isinstance(response, HttpResponse) and response.status_code == 429
    assert response.content == b'{"x":0.5,"y":[0,1]}'
    assert dict(response.items()) == {"Content-Type": "application/json", "Retry-After": "3"}
    again = Reply.of(response)
    assert (again.status_code, again.content, again.headers) == (429, reply.content, reply.headers)


def test_reason_phrases_are_djangos_including_statuses_http_does_not_name():
    assert Reply(b"", 404).reason_phrase == HttpResponse(status=404).reason_phrase == "Not Found"
    assert Reply(b"", 499).reason_phrase == HttpResponse(status=499).reason_phrase == "Unknown Status Code"


def test_an_api_view_answers_django_with_a_response_and_keeps_its_function_for_the_front():
    async def view(request, name):
        return Reply(name.encode(), content_type="application/octet-stream", headers={"X-A": "1"})

    django_view = api_view(view)
    assert django_view.replies is view and django_view.__name__ == "view"
    response = asyncio.run(django_view(None, "abc"))
    assert response.content == b"abc" and response["Content-Type"] == "application/octet-stream"
    assert response["X-A"] == "1"
