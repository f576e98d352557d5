"""Helpers shared by the CloudEvents conformance tests.

* ``StraitServer``: starts ``$STRAIT_BIN serve --dev`` on a free loopback port and
  talks to its HTTP API.
* ``Receiver``: a threaded ``http.server`` that records every request it gets and
  parses it back into a CloudEvent with the official Python SDK.
* Builders for SDK events and for the three ingress content modes.

Only the official ``cloudevents`` SDK (2.x, ``cloudevents.core``) is used to build
and parse events.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable

import requests
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http,
    to_binary,
    to_structured,
)
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

JSON_FORMAT = JSONFormat()

READY_TIMEOUT_S = 30.0
DELIVERY_TIMEOUT_S = float(os.environ.get("STRAIT_TEST_DELIVERY_TIMEOUT", "30"))
HTTP_TIMEOUT_S = 15.0

STRUCTURED_CT = "application/cloudevents+json"
BATCH_CT = "application/cloudevents-batch+json"

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

# ---------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def tail(path: Path, limit: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:  # pragma: no cover - diagnostics only
        return f"<cannot read {path}: {exc}>"
    text = ANSI_RE.sub("", data[-limit:].decode("utf-8", errors="replace"))
    if len(data) > limit:
        text = "...\n" + text
    return text or "<empty>"


def parse_traceparent(value: Any) -> tuple[str, str, str]:
    """Validate a W3C traceparent (version 00) and return (trace_id, span_id, flags)."""
    assert isinstance(value, str), f"traceparent is not a string: {value!r}"
    m = TRACEPARENT_RE.match(value)
    assert m, f"not a valid W3C traceparent: {value!r}"
    trace_id, span_id, flags = m.groups()
    assert trace_id != "0" * 32, f"traceparent has an all-zero trace id: {value!r}"
    assert span_id != "0" * 16, f"traceparent has an all-zero span id: {value!r}"
    return trace_id, span_id, flags


def new_traceparent() -> tuple[str, str]:
    """A fresh producer traceparent and its trace id."""
    trace_id = uuid.uuid4().hex
    span_id = uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id


# ---------------------------------------------------------------------------
# the strait process
# ---------------------------------------------------------------------------


class StraitServer:
    """One ``strait serve --dev`` process and an HTTP client for it."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any] | None = None):
        self.binary = binary
        self.workdir = workdir
        # Optional node config (written as JSON, which is YAML), passed with --config.
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "strait.json"
            workdir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(json.dumps(config, indent=2))
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = workdir / "strait.stdout.log"
        self.stderr_path = workdir / "strait.stderr.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()

    # -- lifecycle ---------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return [
            self.binary,
            "serve",
            "--dev",
            "--data-dir",
            str(self.data_dir),
            "--http",
            f"127.0.0.1:{self.port}",
        ] + (["--config", str(self.config_path)] if self.config_path else [])

    def logs(self) -> str:
        return (
            f"--- strait stderr ({self.stderr_path}) ---\n{tail(self.stderr_path)}\n"
            f"--- strait stdout ({self.stdout_path}) ---\n{tail(self.stdout_path, 2000)}"
        )

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(
                    f"strait exited with status {rc} before becoming ready\n"
                    f"command: {' '.join(self.argv)}\n{self.logs()}"
                )
            try:
                resp = self.http.get(self.url("/readyz"), timeout=1.0)
                if resp.status_code == 200:
                    return
                last = f"GET /readyz -> {resp.status_code} {resp.text[:200]!r}"
            except requests.RequestException as exc:
                last = f"GET /readyz failed: {exc.__class__.__name__}: {exc}"
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"strait was not ready within {READY_TIMEOUT_S:.0f}s ({last})\n"
                    f"command: {' '.join(self.argv)}\n{self.logs()}"
                )
            time.sleep(0.1)

    def crashed(self) -> int | None:
        """The exit status if the process is gone, else None."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # -- HTTP API ----------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.http.request(method, self.url(path), **kwargs)

    def post_events(
        self, headers: dict[str, str], body: bytes, bus: str = "default"
    ) -> requests.Response:
        return self.request("POST", f"/v1/buses/{bus}/events", headers=headers, data=body)

    def send(
        self,
        event: BaseCloudEvent,
        mode: str,
        bus: str = "default",
        extra_headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """Send one event in ``binary`` or ``structured`` mode (SDK encoding)."""
        if mode == "binary":
            msg = to_binary(event, JSON_FORMAT)
        elif mode == "structured":
            msg = to_structured(event, JSON_FORMAT)
        else:
            raise ValueError(mode)
        headers = dict(msg.headers)
        headers.update(extra_headers or {})
        return self.post_events(headers, msg.body, bus)

    def send_batch(
        self, events: Iterable[BaseCloudEvent], bus: str = "default"
    ) -> requests.Response:
        return self.post_events({"content-type": BATCH_CT}, batch_body(events), bus)

    def ensure_bus(self, bus: str) -> None:
        resp = self.request("GET", f"/v1/buses/{bus}")
        if resp.status_code == 200:
            return
        assert resp.status_code == 404, f"GET /v1/buses/{bus}: {describe(resp)}"
        resp = self.request("PUT", f"/v1/buses/{bus}", json={"description": "pytest"})
        assert resp.status_code == 200, f"PUT /v1/buses/{bus}: {describe(resp)}"

    def put_rule(self, bus: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        resp = self.request("PUT", f"/v1/buses/{bus}/rules/{name}", json=spec)
        assert resp.status_code == 200, (
            f"PUT /v1/buses/{bus}/rules/{name} with {json.dumps(spec)}: {describe(resp)}"
        )
        return resp.json()

    def rule_status(self, bus: str, name: str) -> str:
        try:
            resp = self.request("GET", f"/v1/buses/{bus}/rules/{name}", timeout=5)
            return f"{resp.status_code} {resp.text[:2000]}"
        except requests.RequestException as exc:
            return f"<GET rule failed: {exc}>"

    def delete_rule(self, bus: str, name: str) -> None:
        try:
            self.request("DELETE", f"/v1/buses/{bus}/rules/{name}", timeout=5)
        except requests.RequestException:
            pass


def describe(resp: requests.Response) -> str:
    return f"HTTP {resp.status_code}: {resp.text[:2000]}"


def ingest_result(resp: requests.Response, expected_status: int = 200) -> dict[str, Any]:
    assert resp.status_code == expected_status, (
        f"ingest answered {describe(resp)} (expected {expected_status})"
    )
    ctype = resp.headers.get("content-type", "")
    assert ctype.split(";")[0].strip() == "application/json", (
        f"ingest answer is not JSON: content-type {ctype!r}, {describe(resp)}"
    )
    return resp.json()


def assert_ingest(
    resp: requests.Response,
    expected: list[tuple[str | None, str]],
    http_status: int = 200,
) -> dict[str, Any]:
    """Check an ingest answer: per-entry ``(id, status)`` and the counters."""
    body = ingest_result(resp, http_status)
    results = body.get("results")
    assert isinstance(results, list), f"no `results` list in {body}"
    got = [(r.get("id"), r.get("status")) for r in results]
    assert got == expected, f"per-entry results {got} != expected {expected}; body {body}"
    counts = {
        "accepted": sum(1 for _, s in expected if s == "accepted"),
        "duplicates": sum(1 for _, s in expected if s == "duplicate"),
        "failed": sum(1 for _, s in expected if s == "error"),
    }
    for key, value in counts.items():
        assert body.get(key) == value, f"`{key}` is {body.get(key)!r}, expected {value}; body {body}"
    return body


# ---------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------

FIXED_TIME = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=timezone.utc)
SUBJECT = "orders/ü 42 100% \"quoted\""
DATASCHEMA = "https://schemas.example.com/strait/order.json?v=1&x=%2F"
STRING_EXT = "hello wörld 100% ✓"
TEXT_DATA = "héllo ✓ 日本"
TEXT_CT = "text/plain; charset=utf-8"
JSON_DATA: dict[str, Any] = {
    "orderId": "o-1",
    "amount": 150,
    "price": 12.5,
    "currency": "EUR",
    "note": "naïve ✓ 日本",
    "paid": True,
    "coupon": None,
    "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
}
JSON_CT = "application/json"
RAW_DATA = bytes([0x00, 0x01, 0x7F, 0x80, 0xC3, 0x28, 0xFE, 0xFF]) + b"strait\x00\xff\r\n"
RAW_CT = "application/octet-stream"

BASE_ATTRS = {"id", "source", "type", "specversion"}


def make_event(
    source: str,
    *,
    kind: str,
    typed_extensions: bool,
    traceparent: str | None = None,
    event_id: str | None = None,
    with_time: bool = True,
) -> CloudEvent:
    """An SDK v1.0 event with every optional attribute and three extensions.

    ``typed_extensions``: an int and a bool extension as JSON types (structured and
    batch mode can carry them) or as their canonical strings "42"/"true" (what binary
    mode carries; the SDK would write Python's ``str(True)`` = "True" otherwise).
    """
    attrs: dict[str, Any] = {
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": f"com.example.strait.{kind}",
        "specversion": "1.0",
        "subject": SUBJECT,
        "dataschema": DATASCHEMA,
        "comexampleext": STRING_EXT,
        "myint": 42 if typed_extensions else "42",
        "mybool": True if typed_extensions else "true",
    }
    if with_time:
        attrs["time"] = FIXED_TIME
    if traceparent is not None:
        attrs["traceparent"] = traceparent
    data: Any
    if kind == "json":
        attrs["datacontenttype"] = JSON_CT
        data = JSON_DATA
    elif kind == "text":
        attrs["datacontenttype"] = TEXT_CT
        data = TEXT_DATA
    elif kind == "bytes":
        attrs["datacontenttype"] = RAW_CT
        data = RAW_DATA
    else:
        raise ValueError(kind)
    event = CloudEvent(attrs, data)
    if not with_time:
        # SDK 2.x stamps `time` itself when it is missing; take it out again.
        event.get_attributes().pop("time", None)
    return event


def event_json(event: BaseCloudEvent) -> dict[str, Any]:
    """The event in JSON format, as the SDK writes it for structured mode."""
    return json.loads(JSON_FORMAT.write(event))


def batch_body(events: Iterable[BaseCloudEvent]) -> bytes:
    """A batch-mode body. SDK 2.x has no batch helper: the JSON format of each event."""
    return json.dumps([event_json(e) for e in events]).encode("utf-8")


# ---------------------------------------------------------------------------
# the receiver
# ---------------------------------------------------------------------------


@dataclass
class Delivery:
    method: str
    path: str
    header_items: list[tuple[str, str]]
    body: bytes
    received_at: float
    event: BaseCloudEvent | None = None
    parse_error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.header_items:
            key = name.lower()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        try:
            self.event = from_http(HTTPMessage(dict(self.headers), self.body), JSON_FORMAT)
        except Exception as exc:  # noqa: BLE001 - any SDK error is a finding
            self.parse_error = f"{exc.__class__.__name__}: {exc}"

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def ce_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k.startswith("ce-")}

    def summary(self) -> str:
        body = self.body[:600]
        return (
            f"{self.method} {self.path}\n  headers: {self.header_items}\n"
            f"  body: {body!r}{'...' if len(self.body) > 600 else ''}\n"
            f"  parsed: {self.event.get_attributes() if self.event else self.parse_error}"
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        self.server.receiver._record(
            Delivery(
                method=self.command,
                path=self.path,
                header_items=list(self.headers.items()),
                body=body,
                received_at=time.monotonic(),
            )
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = _handle
    do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: "Receiver"


class Receiver:
    """Records every request; ``wait_for`` polls (condition variable) for deliveries."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        self._cond = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, delivery: Delivery) -> None:
        with self._cond:
            self._deliveries.append(delivery)
            self._cond.notify_all()

    def endpoint(self, name: str) -> tuple[str, str]:
        """A fresh URL on this receiver and its path."""
        path = f"/hook/{name}"
        return f"http://127.0.0.1:{self.port}{path}", path

    def deliveries(self, path: str) -> list[Delivery]:
        with self._cond:
            return [d for d in self._deliveries if d.path == path]

    def wait_for(
        self,
        path: str,
        ids: Iterable[str],
        timeout: float = DELIVERY_TIMEOUT_S,
        diagnostics: Any = None,
    ) -> dict[str, Delivery]:
        """Wait until an event with each id has arrived on ``path``; first one per id."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found: dict[str, Delivery] = {}
                broken = []
                for d in self._deliveries:
                    if d.path != path:
                        continue
                    if d.event is None:
                        broken.append(d)
                    elif d.event.get_id() in wanted:
                        found.setdefault(d.event.get_id(), d)
                if broken:
                    raise AssertionError(
                        "the CloudEvents SDK could not parse a delivery:\n"
                        + "\n".join(d.summary() for d in broken)
                    )
                if set(found) == wanted:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [d.summary() for d in self._deliveries if d.path == path]
                    extra = diagnostics() if callable(diagnostics) else ""
                    raise AssertionError(
                        f"timed out after {timeout:.0f}s waiting for deliveries on {path}: "
                        f"missing ids {sorted(wanted - set(found))}; "
                        f"{len(seen)} request(s) seen there:\n" + "\n".join(seen)
                        + (f"\n{extra}" if extra else "")
                    )
                self._cond.wait(timeout=min(remaining, 0.5))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
