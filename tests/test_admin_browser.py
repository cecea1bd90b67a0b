"""The admin in a real browser: Debian's chromium driven by Playwright against a live server.

An operator logs in, uploads a version through the form (real safetensors file through the
real loader and validation subprocess), sees it ready, promotes it with the alias form and
finds the move in the model's alias history. A non-staff user is sent back to the login
page. Screenshots are kept under var/screenshots/ as CI artifacts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model

from registry.models import AliasEvent, ModelVersion
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(django_settings.BASE_DIR) / "var" / "screenshots"

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def browser():
    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is needed for the browser tests: apt-get install -y chromium (make test does it as root)"
    )
    # Playwright's sync API runs an event loop in this thread; Django's ORM calls made
    # by the test itself are still synchronous and safe.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            yield b
        finally:
            b.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def site(live_server, settings):
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return live_server.url


def login(page, site: str, username: str, password: str) -> None:
    page.goto(f"{site}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


def test_operator_uploads_a_version_and_promotes_it_in_the_browser(browser, site, tmp_path):
    get_user_model().objects.create_superuser("operator", "", "s3cret-pass")
    artifact = tmp_path / "iris.safetensors"
    artifact.write_bytes(safetensors_bytes(small_mlp()))
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    login(page, site, "operator", "s3cret-pass")
    assert page.url.rstrip("/").endswith("/admin"), page.url

    page.goto(f"{site}/admin/registry/modelversion/add/")
    assert "runs on this server" in page.content()  # the plain-words warning about code formats
    page.fill("#id_model_name", "iris")
    page.set_input_files("#id_artifact_file", str(artifact))
    page.select_option("#id_format", "safetensors")
    page.select_option("#id_architecture", IRIS_CONFIG["architecture"])
    page.fill("#id_architecture_args", json.dumps(IRIS_CONFIG["architecture_args"]))
    page.fill("#id_inputs", json.dumps(IRIS_CONFIG["inputs"]))
    page.fill("#id_outputs", json.dumps(IRIS_CONFIG["outputs"]))
    page.fill("#id_postprocess", json.dumps([{"step": "softmax"}]))
    page.fill("#id_example", json.dumps([5.1, 3.5, 1.4, 0.2]))
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/registry/modelversion/")
    page.screenshot(path=str(SCREENSHOTS / "admin-version-uploaded.png"), full_page=True)
    assert "was added successfully" in page.content()
    version = ModelVersion.objects.get(model__name="iris", version=1)
    assert version.status == ModelVersion.Status.READY
    assert page.locator("td.field-status_badge").first.inner_text().strip() == "Ready"

    # Promote with the alias form; the move lands in the model's alias history.
    page.goto(f"{site}/admin/registry/modelalias/add/")
    page.select_option("#id_model", label="iris")
    page.fill("#id_name", "production")
    page.select_option("#id_version", label="iris v1")
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/registry/modelalias/")
    event = AliasEvent.objects.get(model__name="iris", alias="production")
    assert (event.from_version, event.to_version, event.actor) == (None, 1, "user:operator")

    page.goto(f"{site}/admin/registry/registeredmodel/{version.model_id}/change/")
    history = page.locator("#alias_events-group").inner_text()
    assert "production" in history and "user:operator" in history
    page.screenshot(path=str(SCREENSHOTS / "admin-model-history.png"), full_page=True)
    assert not errors, errors


def test_a_non_staff_user_is_sent_back_to_the_login_page(browser, site):
    get_user_model().objects.create_user("viewer", "", "s3cret-pass")
    page = browser.new_page()
    login(page, site, "viewer", "s3cret-pass")
    assert "/admin/login/" in page.url
    page.goto(f"{site}/admin/registry/modelversion/")
    assert "/admin/login/" in page.url
    assert page.locator("#id_username").count() == 1
