"""A mixed-workload HTTP load generator for the fault and soak tests (standard library only).

Each connection is a thread with one persistent HTTP/1.1 connection, sending in turn
predictions, now and then a job submission, and now and then a bad request whose expected
status is known (malformed JSON 400, wrong shape 400, a string for a number 400, unknown
model 404, bad key 401, wrong content type 415). Every answer is recorded as
(seconds since start, kind, status, error code).

In-process: ``Load(...).start()`` ... ``.stop()``. As a process (the soak, so that the load
does not share the test process's interpreter): ``python -m tests.robustness.loadgen
--url ... --key ... --model ... --seconds ... --connections ... --out result.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
JOB_ROWS = [[round(0.1 * i, 2), 3.0, 1.5, 0.2] for i in range(20)]

# kind -> (method, path template, body, content type, whether the key is sent, expected status)
BAD = [
    ("bad_json", "POST", "/api/v1/models/{model}/predict", b'{"instances": [[5.1, 3.5,', "application/json", True, 400),
    ("bad_shape", "POST", "/api/v1/models/{model}/predict", b'{"instances": [[1.0, 2.0]]}', "application/json", True,
     400),
    ("bad_type", "POST", "/api/v1/models/{model}/predict", b'{"instances": [["a", "b", "c", "d"]]}',
     "application/json", True, 400),
    ("unknown_model", "POST", "/api/v1/models/no-such-model-x/predict", b'{"instances": [[1, 2, 3, 4]]}',
     "application/json", True, 404),
    ("bad_key", "POST", "/api/v1/models/{model}/predict", b'{"instances": [[1, 2, 3, 4]]}', "application/json",
     False, 401),
    ("bad_content_type", "POST", "/api/v1/models/{model}/predict", b"instances=1", "text/plain", True, 415),
]
EXPECTED = {kind: status for kind, *_, status in BAD}


@dataclass
class Load:
    url: str
    key: str
    model: str
    connections: int = 4
    job_every: int = 0  # one job submission every N requests of a connection (0: none)
    bad_every: int = 0  # one bad request every N requests (0: none)
    list_every: int = 0  # one GET /api/v1/jobs every N requests (0: none)
    pause: float = 0.0  # seconds between requests of a connection (0: as fast as it answers)
    timeout: float = 30.0
    results: list[tuple[float, str, int, str]] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    samples_5xx: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.t0 = time.monotonic()
        self.predict_body = json.dumps({"instances": ROWS}).encode()
        self.job_body = json.dumps({"instances": JOB_ROWS}).encode()

    # --- running ---------------------------------------------------------------------------------------

    def start(self) -> Load:
        self.t0 = time.monotonic()
        for i in range(self.connections):
            thread = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> Load:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self

    def run_for(self, seconds: float) -> Load:
        self.start()
        self._stop.wait(seconds)
        return self.stop()

    def _request(self, conn, method: str, path: str, body: bytes | None, content_type: str, key: str | None):
        headers = {"Content-Type": content_type} if body is not None else {}
        if key is not None:
            headers["Authorization"] = f"Api-Key {key}"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, response.getheader("Connection", ""), data, response.headers  # case-insensitive: HTTP header names are (granian sends them lower-case)

    def _run(self, index: int) -> None:
        conn = None
        i = index  # connections start at different points of the mix
        bad = index
        while not self._stop.is_set():
            i += 1
            if self.job_every and i % self.job_every == 0:
                kind, method, path, body, ctype, key = (
                    "job", "POST", f"/api/v1/models/{self.model}/jobs", self.job_body, "application/json", self.key)
            elif self.bad_every and i % self.bad_every == 0:
                bad += 1
                kind, method, path, body, ctype, with_key, _ = BAD[bad % len(BAD)]
                path = path.format(model=self.model)
                key = self.key if with_key else "nokey00.this-is-not-a-key"
            elif self.list_every and i % self.list_every == 0:
                kind, method, path, body, ctype, key = ("list", "GET", "/api/v1/jobs?limit=5", None, "", self.key)
            else:
                kind, method, path, body, ctype, key = (
                    "predict", "POST", f"/api/v1/models/{self.model}/predict", self.predict_body, "application/json",
                    self.key)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                status, connection, data, headers = self._request(conn, method, path, body, ctype, key)
                if connection.lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                self._record(kind, 0, f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.05)
                continue
            code = ""
            try:
                parsed = json.loads(data) if data else None
                if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                    code = parsed["error"].get("code", "")
                if kind == "job" and status in (200, 202):
                    with self._lock:
                        self.job_ids.append(parsed["id"])
            except ValueError:
                code = "not-json"
            if status >= 500:
                with self._lock:
                    if len(self.samples_5xx) < 20:
                        self.samples_5xx.append({"kind": kind, "status": status, "retry_after": headers.get(
                            "Retry-After"), "body": data[:300].decode(errors="replace")})
            self._record(kind, status, code)
            if self.pause:
                self._stop.wait(self.pause)
        if conn is not None:
            conn.close()

    def _record(self, kind: str, status: int, code: str) -> None:
        with self._lock:
            self.results.append((round(time.monotonic() - self.t0, 3), kind, status, code))

    # --- reading -----------------------------------------------------------------------------------

    def between(self, start: float, end: float) -> list[tuple[float, str, int, str]]:
        return [r for r in self.results if start <= r[0] < end]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def summary(self) -> dict:
        by_kind: dict[str, Counter] = {}
        for _, kind, status, _ in self.results:
            by_kind.setdefault(kind, Counter())[str(status)] += 1
        bad_wrong = sum(n for kind, counts in by_kind.items() if kind in EXPECTED
                        for status, n in counts.items() if int(status) != EXPECTED[kind])
        return {"by_kind": {k: dict(v) for k, v in by_kind.items()}, "requests": len(self.results),
                "bad_unexpected_status": bad_wrong, "job_ids": list(self.job_ids), "samples_5xx": self.samples_5xx,
                "codes_5xx": dict(Counter(f"{s}:{c}" for _, _, s, c in self.results if s >= 500))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--job-every", type=int, default=0)
    parser.add_argument("--bad-every", type=int, default=0)
    parser.add_argument("--list-every", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    load = Load(args.url, args.key, args.model, connections=args.connections, job_every=args.job_every,
                bad_every=args.bad_every, list_every=args.list_every)
    load.run_for(args.seconds)
    with open(args.out, "w") as fh:
        json.dump({**load.summary(), "seconds": args.seconds}, fh)


if __name__ == "__main__":
    main()
