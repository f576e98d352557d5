"""Secrets by reference and egress control on a real ``strait serve`` process
(debug logging), driven with ``requests`` and the CloudEvents SDK:

* an API-key connection and an OAuth client-credentials connection (against a
  small token endpoint served here) reach the receiver; the token is fetched once;
* an inline header value is shown as ``***``; a target at 169.254.169.254 is
  refused with 400 naming the field;
* no secret (a canary) appears in any API answer, dead letter or line the node
  logged.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from strait_support import Receiver, StraitServer, free_port, make_event, unique

CANARY = "CANARY-py-5d1e"


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_TokenServer"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode()
        self.server.calls.append((self.headers.get("authorization", ""), body))
        answer = json.dumps(
            {"access_token": "py-token-1", "token_type": "Bearer", "expires_in": 3600}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _TokenServer(ThreadingHTTPServer):
    daemon_threads = True
    calls: list[tuple[str, str]]


@pytest.fixture
def token_endpoint() -> Iterator[_TokenServer]:
    server = _TokenServer(("127.0.0.1", 0), _TokenHandler)
    server.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def node(
    tmp_path: Path, token_endpoint: _TokenServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StraitServer]:
    monkeypatch.setenv("RUST_LOG", "debug,h2=info,hyper=info,openraft=info")
    port = token_endpoint.server_address[1]
    config = {
        "connections": {
            "key": {"api_key": {"header": "x-api-key", "value": f"{CANARY}-key"}},
            "oauth": {
                "oauth_client_credentials": {
                    "token_url": f"http://127.0.0.1:{port}/token",
                    "client_id": "strait-py",
                    "client_secret": f"{CANARY}-oauth",
                    "scope": "events",
                }
            },
        }
    }
    server = StraitServer(os.environ["STRAIT_BIN"], tmp_path, config)
    server.start()
    yield server
    server.stop()


def test_connection_secrets_reach_the_target_and_nothing_else(
    node: StraitServer, receiver: Receiver, token_endpoint: _TokenServer
) -> None:
    node.ensure_bus("default")
    source = unique("/py/conn")
    key_url, key_path = receiver.endpoint(unique("key"))
    oauth_url, oauth_path = receiver.endpoint(unique("oauth"))
    inline_url, inline_path = receiver.endpoint(unique("inline"))
    dlq_url, dlq_path = receiver.endpoint(unique("dlq"))
    closed = f"http://127.0.0.1:{free_port()}/nothing"
    rule = unique("conn")
    shown = node.put_rule(
        "default",
        rule,
        {
            "pattern": {"source": [source]},
            "targets": [
                {"id": "key", "type": "http", "endpoint": key_url, "connection": "key"},
                {"id": "oauth", "type": "http", "endpoint": oauth_url, "connection": "oauth"},
                {"id": "inline", "type": "http", "endpoint": inline_url,
                 "headers": {"x-inline": f"{CANARY}-inline"}},
                {"id": "down", "type": "http", "endpoint": closed,
                 "retry": {"maxAttempts": 1},
                 "deadLetter": {"type": "http", "endpoint": dlq_url, "connection": "key"}},
            ],
        },
    )
    assert shown["targets"][2]["headers"]["x-inline"] == "***", shown
    ids = [unique("e") for _ in range(2)]
    for i in ids:
        event = make_event(source, kind="json", typed_extensions=True, event_id=i)
        resp = node.send(event, "structured")
        assert resp.status_code == 200, resp.text
    key = receiver.wait_for(key_path, ids)
    oauth = receiver.wait_for(oauth_path, ids)
    inline = receiver.wait_for(inline_path, ids)
    dead = receiver.wait_for(dlq_path, ids)
    assert all(d.headers["x-api-key"] == f"{CANARY}-key" for d in key.values())
    assert all(d.headers["authorization"] == "Bearer py-token-1" for d in oauth.values())
    assert all(d.headers["x-inline"] == f"{CANARY}-inline" for d in inline.values())
    assert all(d.headers["x-api-key"] == f"{CANARY}-key" for d in dead.values())
    assert len(token_endpoint.calls) == 1, token_endpoint.calls
    client = base64.b64encode(f"strait-py:{CANARY}-oauth".encode()).decode()
    assert token_endpoint.calls[0] == (
        f"Basic {client}",
        "grant_type=client_credentials&scope=events",
    )

    # A target at the metadata address is refused naming the field.
    resp = node.request(
        "PUT",
        f"/v1/buses/default/rules/{unique('meta')}",
        json={"pattern": {}, "targets": [
            {"id": "t", "type": "http", "endpoint": "http://169.254.169.254/latest/meta-data/"}]},
    )
    assert resp.status_code == 400, resp.text
    assert "targets[0].endpoint" in resp.text and "metadata" in resp.text, resp.text

    # No answer, dead letter or log line holds a secret.
    answers = []
    for path in [
        f"/v1/buses/default/rules/{rule}",
        "/v1/buses/default/rules",
        f"/v1/buses/default/rules/{rule}/dead-letters",
        f"/v1/buses/default/rules/{rule}/targets/down/dead-letters",
        f"/v1/buses/default/events/{ids[0]}?source={source}",
        "/metrics",
    ]:
        resp = node.request("GET", path)
        assert resp.status_code < 500, f"GET {path}: {resp.status_code} {resp.text}"
        answers.append(resp.text)
    text = "\n".join(answers)
    assert ids[0] in text
    assert CANARY not in text, text
    time.sleep(0.5)  # the node's last lines reach its log file
    logs = node.stderr_path.read_text() + node.stdout_path.read_text()
    assert "DEBUG" in logs, "debug logging is on"
    leaked = [line for line in logs.splitlines() if CANARY in line]
    assert not leaked, leaked[:3]
