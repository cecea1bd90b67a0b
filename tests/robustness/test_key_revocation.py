"""A revoked or deleted key is refused as soon as the change commits, however it was made.

The key's cached info (the shared cache's entry, this process's memo) is dropped when the change
is made and again when its transaction commits: a request that read the old row before the commit
and cached it again cannot keep the key working for KEY_CACHE_SECONDS. Bulk changes (the admin's
"Delete selected" and "Revoke" actions, ``update()``, ``revoke_api_key``) drop it too.
"""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import transaction
from django.urls import reverse

from inference.access import key_info_for_prefix
from inference.keys import KEY_CACHE_SECONDS, APIKey, key_cache_name, verified_keys
from tests.inference.support import error_of, make_key

MODELS = "/api/v1/models"


@pytest.fixture(autouse=True)
def _long_memo(settings):
    """A memo far longer than a test: only a dropped entry can make a key refused."""
    settings.INFERENCE_KEY_MEMO_SECONDS = 60
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def prefix_of(plain: str) -> str:
    return plain.partition(".")[0]


def cache_again(plain: str, info) -> None:
    """What a request on another connection does before the commit: it reads the committed (old)
    row and caches it, in the shared cache and in its process's memo."""
    prefix = prefix_of(plain)
    cache.set(key_cache_name(prefix), info, KEY_CACHE_SECONDS)
    verified_keys.put(prefix, verified_keys.digest(plain), info, 60)


def test_a_key_re_cached_before_the_revocation_commits_is_refused_after_the_commit(
    api, db, django_capture_on_commit_callbacks
):
    plain = make_key("racy", rate="10000/s")
    assert api.get(MODELS, plain).status_code == 200
    before = key_info_for_prefix(prefix_of(plain))
    assert before is not None and not before.revoked
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        row = APIKey.objects.get(prefix=prefix_of(plain))
        row.revoked = True
        row.save()  # drops the cached info now ...
        cache_again(plain, before)  # ... and a concurrent request caches the old row again
    r = api.get(MODELS, plain)  # ... and dropped again when the revocation committed
    assert r.status_code == 401 and "revoked" in error_of(r)["message"]
    assert len(callbacks) == 1


def test_a_key_re_cached_before_its_deletion_commits_is_refused_after_the_commit(
    api, db, django_capture_on_commit_callbacks
):
    plain = make_key("racy-delete", rate="10000/s")
    assert api.get(MODELS, plain).status_code == 200
    before = key_info_for_prefix(prefix_of(plain))
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        APIKey.objects.get(prefix=prefix_of(plain)).delete()
        cache_again(plain, before)
    assert api.get(MODELS, plain).status_code == 401


def test_delete_selected_in_the_admin_refuses_the_keys_at_once(api, admin_client, django_capture_on_commit_callbacks):
    plains = [make_key(f"bulk-{i}", rate="10000/s") for i in range(3)]
    kept = make_key("kept", rate="10000/s")
    for plain in [*plains, kept]:
        assert api.get(MODELS, plain).status_code == 200  # cached in the shared cache and the memo
    selected = list(APIKey.objects.filter(name__startswith="bulk-").values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:inference_apikey_changelist"),
            {"action": "delete_selected", "_selected_action": selected, "post": "yes"},
        )
    assert response.status_code == 302
    assert list(APIKey.objects.values_list("name", flat=True)) == ["kept"]
    for plain in plains:
        r = api.get(MODELS, plain)
        assert r.status_code == 401 and error_of(r)["code"] == "not_authenticated"
    assert api.get(MODELS, kept).status_code == 200


def test_the_admins_revoke_action_and_update_refuse_the_keys_at_once(api, admin_client,
                                                                    django_capture_on_commit_callbacks):
    first, second, third = (make_key(name, rate="10000/s") for name in ("first", "second", "third"))
    for plain in (first, second, third):
        assert api.get(MODELS, plain).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:inference_apikey_changelist"),
            {"action": "revoke_keys", "_selected_action": [APIKey.objects.get(name="first").pk]},
        )
    assert response.status_code == 302
    r = api.get(MODELS, first)
    assert r.status_code == 401 and "revoked" in error_of(r)["message"]
    assert api.get(MODELS, second).status_code == 200
    APIKey.objects.filter(name="second").update(revoked=True)
    assert api.get(MODELS, second).status_code == 401
    assert api.get(MODELS, third).status_code == 200


def test_revoke_api_key_command_refuses_the_key_at_once(api, db, capsys):
    plain = make_key("by-command", rate="10000/s")
    assert api.get(MODELS, plain).status_code == 200
    call_command("revoke_api_key", prefix_of(plain))
    assert "Revoked 1 API key(s)" in capsys.readouterr().out
    r = api.get(MODELS, plain)
    assert r.status_code == 401 and "revoked" in error_of(r)["message"]
    assert APIKey.objects.get(prefix=prefix_of(plain)).revoked
