"""Job completion callbacks against real local HTTP(S) servers: allowlist at submit and at
delivery, the signing secret, redirects, internal addresses and the name resolved once.

Delivery is called in-process (``deliver``), as the django-q2 task does; the receivers are
``http.server`` servers on 127.0.0.1, which is loopback: the happy paths allowlist it with
INFERENCE_CALLBACK_ALLOWED_NETWORKS, as an operator allows an internal receiver.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.server
import json
import socket
import ssl
import threading

import orjson
import pytest
from django_q.models import Schedule

from inference.jobs.callbacks import deliver
from inference.jobs.models import InferenceJob
from inference.jobs.selectors import job_state
from tests.inference.support import ROWS, error_of

pytestmark = pytest.mark.django_db

SECRET = "callback-test-secret"
JOBS = "/api/v1/models/iris/jobs"


class Receiver:
    """A local HTTP(S) server that records each request and answers `status` (with `headers`)."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
        self.requests: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                          "body": self.rfile.read(length)})
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _record

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def callbacks_on(settings):
    settings.INFERENCE_CALLBACK_SECRET = SECRET
    settings.INFERENCE_CALLBACK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    return settings


@pytest.fixture
def resolver(monkeypatch):
    """socket.getaddrinfo with some names pinned to addresses (``names[host] = [addr, ...]``, one
    list item per successive lookup); every lookup of a pinned name is counted."""
    real = socket.getaddrinfo
    names: dict[str, list[str]] = {}
    lookups: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            lookups.append(host)
            answers = names[host]
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            return [(family, socket.SOCK_STREAM, 6, "", sockaddr)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names, lookups


def submit(api, key, url: str):
    return api.post(JOBS, {"instances": ROWS, "callback_url": url}, key)


def finished_job(api, key, url: str) -> InferenceJob:
    """Submit a job with this callback (202) and mark it succeeded, as a worker would."""
    r = submit(api, key, url)
    assert r.status_code == 202, r.content
    InferenceJob.objects.filter(pk=r.json()["id"]).update(status=InferenceJob.Status.SUCCEEDED, attempts=1)
    return InferenceJob.objects.get(pk=r.json()["id"])


def test_a_callback_is_posted_signed_with_the_callback_secret(api, key, iris, callbacks_on, receivers):
    hook = receivers()
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = [f"127.0.0.1:{hook.port}"]
    job = finished_job(api, key, hook.url("/hook?job=1"))

    assert deliver(str(job.pk), 1) == "delivered"

    [request] = hook.requests
    assert request["method"] == "POST" and request["path"] == "/hook?job=1"
    assert request["headers"]["Host"] == f"127.0.0.1:{hook.port}"
    assert json.loads(request["body"])["id"] == str(job.pk)
    assert json.loads(request["body"]) == orjson.loads(orjson.dumps(job_state(job)))
    ts, mac = (part.split("=", 1)[1] for part in request["headers"]["X-Inference-Signature"].split(","))
    assert mac == hmac.new(SECRET.encode(), f"{ts}.".encode() + request["body"], hashlib.sha256).hexdigest()
    job.refresh_from_db()
    assert job.callback_status == "delivered (200) on attempt 1"


def test_a_redirect_is_not_followed(api, key, iris, callbacks_on, receivers):
    """A 302 from the allowlisted receiver must not send the signed request anywhere else (before:
    urllib followed it, signature header included, to any URL, e.g. 169.254.169.254)."""
    elsewhere = receivers()
    hook = receivers(status=302, headers={"Location": elsewhere.url("/latest/meta-data/")})
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = [f"127.0.0.1:{hook.port}"]
    job = finished_job(api, key, hook.url())

    assert deliver(str(job.pk), 1) == "retry scheduled"

    assert len(hook.requests) == 1
    assert elsewhere.requests == []
    job.refresh_from_db()
    assert job.callback_status.startswith("attempt 1 failed: HTTP 302, a redirect (not followed")
    assert Schedule.objects.filter(name=f"callback-{job.pk}-2").exists()


def test_a_loopback_receiver_is_refused_unless_its_network_is_allowed(api, key, iris, callbacks_on, receivers):
    hook = receivers()
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = [f"127.0.0.1:{hook.port}"]
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_NETWORKS = []
    job = finished_job(api, key, hook.url())

    assert deliver(str(job.pk), 1) == "refused"

    assert hook.requests == []
    job.refresh_from_db()
    assert job.callback_status.startswith("refused: 127.0.0.1 resolves to 127.0.0.1 (a loopback address)")
    assert "INFERENCE_CALLBACK_ALLOWED_NETWORKS" in job.callback_status
    assert not Schedule.objects.filter(name__startswith=f"callback-{job.pk}").exists()  # a refusal is final


def test_the_allowlist_is_checked_again_at_delivery(api, key, iris, callbacks_on, receivers):
    hook = receivers()
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = [f"127.0.0.1:{hook.port}"]
    job = finished_job(api, key, hook.url())
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = ["hooks.example.com"]  # the operator removed it since

    assert deliver(str(job.pk), 1) == "refused"

    assert hook.requests == []
    job.refresh_from_db()
    assert job.callback_status.startswith("refused: callback_url host '127.0.0.1' port")


@pytest.mark.parametrize("address,reason", [
    ("169.254.169.254", "169.254.169.254 (a cloud metadata address)"),
    ("10.1.2.3", "10.1.2.3 (a private address)"),
    ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe (a cloud metadata address)"),
    ("fd00:ec2::254", "fd00:ec2::254 (a cloud metadata address)"),
    ("0.0.0.0", "0.0.0.0 (an unspecified address)"),
    ("100.64.0.1", "100.64.0.1 (not a public address)"),
])
def test_a_name_that_resolves_to_an_internal_address_is_refused(address, reason, api, key, iris, callbacks_on,
                                                                 resolver, monkeypatch):
    names, lookups = resolver
    names["hooks.example.com"] = [address]
    connects: list = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **kw: connects.append(a) or pytest.fail("connected"))
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = ["hooks.example.com"]
    job = finished_job(api, key, "https://hooks.example.com/done")

    assert deliver(str(job.pk), 1) == "refused"

    assert connects == []
    job.refresh_from_db()
    assert job.callback_status.startswith(f"refused: hooks.example.com resolves to {reason}")


def test_the_name_is_resolved_once_and_the_request_goes_to_that_address(api, key, iris, callbacks_on, receivers,
                                                                         resolver):
    """A rebinding DNS server answers a loopback (allowed here) address first, then the metadata
    address: the request goes to the first answer, and the name keeps its Host header."""
    names, lookups = resolver
    names["hooks.test"] = ["127.0.0.1", "169.254.169.254"]
    hook = receivers()
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = [f"hooks.test:{hook.port}"]
    job = finished_job(api, key, hook.url(host="hooks.test"))

    assert deliver(str(job.pk), 1) == "delivered"

    assert lookups == ["hooks.test"]
    [request] = hook.requests
    assert request["headers"]["Host"] == f"hooks.test:{hook.port}"


def test_a_name_alone_allows_only_the_default_port(api, key, iris, callbacks_on):
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = ["hooks.example.com"]
    assert submit(api, key, "https://hooks.example.com/done").status_code == 202
    assert submit(api, key, "http://hooks.example.com/done").status_code == 202
    r = submit(api, key, "https://hooks.example.com:6379/done")
    assert r.status_code == 400
    assert error_of(r)["details"] == {"path": "callback_url", "reason": "callback_not_allowed"}
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = ["hooks.example.com:6379"]
    assert submit(api, key, "https://hooks.example.com:6379/done").status_code == 202


# ---- the secret ------------------------------------------------------------------------------------------------

def test_a_job_with_a_callback_is_refused_without_the_callback_secret(api, key, iris, settings):
    settings.INFERENCE_CALLBACK_SECRET = ""
    settings.INFERENCE_CALLBACK_ALLOWED_HOSTS = ["hooks.example.com"]
    before = InferenceJob.objects.count()

    r = submit(api, key, "https://hooks.example.com/done")

    assert r.status_code == 400
    error = error_of(r)
    assert error["code"] == "invalid_input"
    assert error["details"] == {"path": "callback_url", "reason": "callback_secret_not_set"}
    assert "INFERENCE_CALLBACK_SECRET" in error["message"]
    assert InferenceJob.objects.count() == before
    assert api.post(JOBS, {"instances": ROWS}, key).status_code == 202  # without a callback: accepted


def test_delivery_never_signs_with_the_secret_key(api, key, iris, callbacks_on, receivers):
    hook = receivers()
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = [f"127.0.0.1:{hook.port}"]
    job = finished_job(api, key, hook.url())
    callbacks_on.INFERENCE_CALLBACK_SECRET = ""  # unset after the job was submitted

    assert deliver(str(job.pk), 1) == "refused"

    assert hook.requests == []
    job.refresh_from_db()
    assert "INFERENCE_CALLBACK_SECRET is not set" in job.callback_status


# ---- https: the certificate is checked against the name, not the pinned address ----------------------------------

def _certificates(tmp_path, name: str):
    """A CA (its PEM file) and a server certificate for `name` signed by it (cert, key files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key, issuer: str, issuer_key, *, ca: bool, san: str | None = None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("test CA", ca_key, "test CA", ca_key, ca=True)
    server = build(name, server_key, "test CA", ca_key, ca=False, san=name)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"


@pytest.mark.parametrize("certificate_for,outcome", [("hooks.test", "delivered"), ("other.test", "retry scheduled")])
def test_https_verifies_the_certificate_of_the_name(certificate_for, outcome, api, key, iris, callbacks_on, receivers,
                                                    resolver, tmp_path, monkeypatch):
    ca, cert, private_key = _certificates(tmp_path, certificate_for)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the default context trusts this CA (and only it)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, private_key)
    names, _ = resolver
    names["hooks.test"] = ["127.0.0.1"]
    hook = receivers(tls=tls)
    callbacks_on.INFERENCE_CALLBACK_ALLOWED_HOSTS = [f"hooks.test:{hook.port}"]
    job = finished_job(api, key, hook.url(host="hooks.test", scheme="https"))

    assert deliver(str(job.pk), 1) == outcome

    job.refresh_from_db()
    if outcome == "delivered":
        assert len(hook.requests) == 1 and hook.requests[0]["headers"]["Host"] == f"hooks.test:{hook.port}"
    else:
        assert hook.requests == []
        assert "CERTIFICATE_VERIFY_FAILED" in job.callback_status
