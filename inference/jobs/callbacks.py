"""Job completion callbacks: POST the final state, signed, retried with backoff.

A callback makes this server send a request where a client asked, so (TorchServe's
CVE-2023-43654, SSRF):

* the URL's host must be in INFERENCE_CALLBACK_ALLOWED_HOSTS (``name``: the scheme's
  default port only; ``name:port``: that port), checked at submit and again at delivery;
* at delivery the name is resolved once, every address it resolves to must be public
  (private, loopback, link-local and cloud-metadata, multicast, reserved, unspecified
  addresses are refused, IPv4-mapped IPv6 included) unless it lies in
  INFERENCE_CALLBACK_ALLOWED_NETWORKS, and the connection goes to that address: no second
  resolution a rebinding DNS server could answer differently. The Host header and, for
  https, SNI and certificate verification use the name;
* redirects are not followed: a 3xx is a failed delivery.

The body is signed with HMAC-SHA256 over ``<timestamp>.<body>`` using
INFERENCE_CALLBACK_SECRET (required: never the SECRET_KEY); receivers check
``X-Inference-Signature: t=<ts>,v1=<hex>``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.utils import timezone

from .models import CALLBACK_URL_MAX_LENGTH, InferenceJob
from .selectors import job_state

logger = logging.getLogger("inference.jobs")

BACKOFF_SECONDS = (0, 60, 300, 1800, 7200)  # after attempt 1, 2, ...
DEFAULT_PORTS = {"http": 80, "https": 443}
TIMEOUT_SECONDS = 10
# Instance metadata services: named in the refusal (all are also non-public addresses).
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
# The address properties that make a callback target internal, as the refusal names them.
INTERNAL = (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_multicast", "multicast"),
            ("is_unspecified", "unspecified"), ("is_reserved", "reserved"), ("is_private", "private"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(Exception):
    """This callback may not be sent (now): the reason says which setting decides it."""


@dataclass(frozen=True)
class CallbackTarget:
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


# ---- the URL: shape, allowlist, secret (at submit and at delivery) --------------------------------------

def _allowed_hosts() -> set[tuple[str, int | None]]:
    """INFERENCE_CALLBACK_ALLOWED_HOSTS as (host, port or None) pairs."""
    allowed: set[tuple[str, int | None]] = set()
    for entry in settings.INFERENCE_CALLBACK_ALLOWED_HOSTS:
        entry = entry.strip().lower()
        if entry.startswith("["):  # [IPv6] or [IPv6]:port
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        else:  # a name, an IPv4 address, or a bare IPv6 address
            host, port = entry, ""
        if port and not port.isdigit():
            raise ImproperlyConfigured(f"INFERENCE_CALLBACK_ALLOWED_HOSTS: {entry!r} is not a host or host:port.")
        allowed.add((host, int(port) if port else None))
    return allowed


def callback_target(url: str) -> CallbackTarget:
    """Return where `url` sends its callback, or raise ValidationError (code says why) when it
    is not an http(s) URL or its host and port are not in INFERENCE_CALLBACK_ALLOWED_HOSTS."""
    if not url.isprintable() or " " in url or len(url) > CALLBACK_URL_MAX_LENGTH:
        raise ValidationError(f"callback_url must be an http(s) URL of at most {CALLBACK_URL_MAX_LENGTH} characters, without spaces.",
                              code="invalid_callback")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or port == -1:
        raise ValidationError("callback_url must be an http(s) URL.", code="invalid_callback")
    port = port or DEFAULT_PORTS[parts.scheme]
    allowed = _allowed_hosts()
    host = parts.hostname
    if (host, port) not in allowed and not ((host, None) in allowed and port == DEFAULT_PORTS[parts.scheme]):
        listed = ", ".join(settings.INFERENCE_CALLBACK_ALLOWED_HOSTS) or "none"
        raise ValidationError(
            f"callback_url host {host!r} port {port} is not allowed (INFERENCE_CALLBACK_ALLOWED_HOSTS: {listed}; "
            "a name alone allows ports 80 and 443, name:port another): an open callback would let clients make "
            "this server call anywhere.",
            code="callback_not_allowed",
        )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return CallbackTarget(parts.scheme, host, port, target)


def callback_check(url: str) -> None:
    """Raise ValidationError unless a job may be submitted with this callback URL."""
    callback_target(url)
    if not settings.INFERENCE_CALLBACK_SECRET:
        raise ValidationError(
            "Job callbacks are not enabled on this server: INFERENCE_CALLBACK_SECRET (the key that signs "
            "callbacks) is not set. Submit without callback_url, or ask an operator to set it.",
            code="callback_secret_not_set",
        )


# ---- the address: resolved once, public unless allowed ------------------------------------------------------

def address_refusal(address: IPAddress) -> str:
    """What makes `address` internal, e.g. "a loopback address" ("" when a callback may go there)."""
    ip = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.INFERENCE_CALLBACK_ALLOWED_NETWORKS]
    if any(ip in network or address in network for network in networks):
        return ""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for attribute, name in INTERNAL:
        if getattr(ip, attribute):
            return f"{'an' if name[0] in 'aeiou' else 'a'} {name} address"
    if not ip.is_global:
        return "not a public address"
    return ""


def resolve(host: str, port: int) -> str:
    """Resolve `host` once; return the address to connect to. Raise CallbackRefused when any of
    its addresses is internal (not in INFERENCE_CALLBACK_ALLOWED_NETWORKS), OSError when it does
    not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # the IDNA codec's refusal of a malformed name
        raise CallbackRefused(f"{host!r} is not a valid host name ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise CallbackRefused(f"{host} resolves to {text!r}, not an IP address") from None
        reason = address_refusal(address)
        if reason:
            raise CallbackRefused(f"{host} resolves to {address} ({reason}); internal receivers need "
                                  "INFERENCE_CALLBACK_ALLOWED_NETWORKS")
    return addresses[0]


class PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to `host` (Host header) made to an address resolved beforehand."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class PinnedHTTPSConnection(PinnedHTTPConnection):
    """The same over TLS: SNI and certificate verification against `host`, not the address."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float):
        super().__init__(host, port, address=address, timeout=timeout)
        self.context = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


def post(where: CallbackTarget, address: str, body: bytes, headers: dict[str, str]) -> int:
    """POST `body` to the target at `address`; return the HTTP status (redirects are not followed)."""
    cls = PinnedHTTPSConnection if where.scheme == "https" else PinnedHTTPConnection
    connection = cls(where.host, where.port, address=address, timeout=TIMEOUT_SECONDS)
    try:
        connection.request("POST", where.target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(64 * 1024)
        return response.status
    finally:
        connection.close()


# ---- delivery (a django-q2 task) ------------------------------------------------------------------------------

def deliver(job_id: str, attempt: int) -> str:
    """POST the job's final state to its callback URL; schedule a retry on failure."""
    job = InferenceJob.objects.get(pk=job_id)
    secret = settings.INFERENCE_CALLBACK_SECRET
    try:
        if not secret:
            raise CallbackRefused("INFERENCE_CALLBACK_SECRET is not set (callbacks are never signed with another key)")
        try:
            where = callback_target(job.callback_url)  # the allowlist as it is now, not as it was at submit
        except ValidationError as exc:
            raise CallbackRefused("; ".join(exc.messages)) from None
        address = resolve(where.host, where.port)
    except CallbackRefused as exc:
        InferenceJob.objects.filter(pk=job.pk).update(callback_status=f"refused: {exc}"[:200])
        logger.error("callback for job %s refused, not sent and not retried: %s. Callbacks go to hosts in "
                     "INFERENCE_CALLBACK_ALLOWED_HOSTS at public addresses (or in INFERENCE_CALLBACK_ALLOWED_NETWORKS), "
                     "signed with INFERENCE_CALLBACK_SECRET.", job.pk, exc)
        return "refused"
    except OSError as exc:
        return _failed(job, attempt, f"cannot resolve {where.host}: {exc}")
    body = orjson.dumps(job_state(job))
    ts = int(time.time())
    headers = {"Content-Type": "application/json", "X-Inference-Signature": signature(secret, ts, body),
               "User-Agent": "inference-platform-callback/1"}
    try:
        status = post(where, address, body, headers)
    except (OSError, http.client.HTTPException) as exc:
        return _failed(job, attempt, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        InferenceJob.objects.filter(pk=job.pk).update(callback_status=f"delivered ({status}) on attempt {attempt}")
        return "delivered"
    if 300 <= status < 400:
        return _failed(job, attempt, f"HTTP {status}, a redirect (not followed: give the final URL)")
    return _failed(job, attempt, f"HTTP {status}")


def _failed(job: InferenceJob, attempt: int, error: str) -> str:
    note = f"attempt {attempt} failed: {error}"
    if attempt >= len(BACKOFF_SECONDS):
        InferenceJob.objects.filter(pk=job.pk).update(callback_status=f"gave up: {note}"[:200])
        logger.warning("callback for job %s %s; gave up after %d attempts", job.pk, note, attempt)
        return "gave up"
    InferenceJob.objects.filter(pk=job.pk).update(callback_status=note[:200])
    from django_q.models import Schedule

    Schedule.objects.create(
        func="inference.tasks.deliver_callback", args=f"'{job.pk}',{attempt + 1}", schedule_type=Schedule.ONCE,
        next_run=timezone.now() + timedelta(seconds=BACKOFF_SECONDS[attempt]), repeats=1,
        name=f"callback-{job.pk}-{attempt + 1}",
    )
    logger.warning("callback for job %s %s; retrying in %d s", job.pk, note, BACKOFF_SECONDS[attempt])
    return "retry scheduled"
