"""A node serving HTTPS (``http_tls`` with certificates from ``strait cert``) and
scoped bearer tokens, driven with the official CloudEvents SDK and ``requests``
verifying the generated CA:

* a producer token (``events:put:orders``) posts binary, structured and batch
  events to its bus over HTTPS, and they reach a rule's target; it gets 403
  naming the missing scope on another bus and on rules;
* a ``read`` token reads and cannot write; an unknown token gets 401;
* a client that does not trust the CA refuses the connection;
* a certificate re-issued on disk is served to new connections without a
  restart;
* ``auth.tokens`` is read again when the config file changes, and on SIGHUP: a
  new token works and a removed one gets 401, with the same process;
* the certificate's expiry is a metric; ``strait cert show`` flags a certificate
  close to expiry.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from cloudevents.core.bindings.http import to_binary, to_structured

from strait_support import (
    BATCH_CT,
    JSON_FORMAT,
    Receiver,
    batch_body,
    free_port,
    make_event,
    tail,
    unique,
)

ADMIN = "admin-token-for-tests"
PRODUCER = "orders-producer-token"
READER = "reader-token"


def run(binary: str, *args: str) -> str:
    out = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"strait {' '.join(args)}: {out.stderr}"
    return out.stdout


def served_cert(port: int) -> bytes:
    """The DER of the certificate the node presents to a new connection."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der
    return der


class TlsNode:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.dir = workdir
        self.ca_dir = workdir / "ca"
        self.certs = workdir / "certs"
        run(binary, "cert", "init-ca", "--dir", str(self.ca_dir))
        self.issue()
        self.ca = self.certs / "ca.pem"
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        config = {
            "node_id": 1,
            "site": "idc",
            "http": f"127.0.0.1:{self.port}",
            "data_dir": str(workdir / "data"),
            "buses": ["orders", "billing"],
            "http_tls": {
                "cert": str(self.certs / "node-1.pem"),
                "key": str(self.certs / "node-1.key"),
                "reload_interval_ms": 200,
            },
            "auth": {
                "tokens": [
                    ADMIN,
                    {"name": "orders-producer", "token": PRODUCER,
                     "scopes": ["events:put:orders"]},
                    {"name": "reader", "token": READER, "scopes": ["read"]},
                ],
                "metrics_public": False,
                "reload_interval_ms": 200,
            },
        }
        self.config = workdir / "node.json"
        self.config.write_text(json.dumps(config))
        self.log = workdir / "strait.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def issue(self) -> None:
        run(self.binary, "cert", "issue", "--ca", str(self.ca_dir), "--node-id", "1",
            "--site", "idc", "--ip", "127.0.0.1", "--dns", "localhost",
            "--out", str(self.certs))

    def start(self) -> None:
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [self.binary, "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env=env, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"strait exited:\n{tail(self.log)}"
            try:
                if requests.get(f"{self.base}/readyz", verify=str(self.ca),
                                timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"not ready over HTTPS:\n{tail(self.log)}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def call(self, method: str, path: str, token: str | None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["authorization"] = f"Bearer {token}"
        return requests.request(method, self.base + path, headers=headers,
                                verify=str(self.ca), timeout=15, **kw)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    binary = os.environ.get("STRAIT_BIN", "")
    if not binary:
        pytest.fail("STRAIT_BIN is not set (STRAIT_BIN=$PWD/target/debug/strait)",
                    pytrace=False)
    n = TlsNode(binary, Path(tmp_path_factory.mktemp("tls")))
    n.start()
    yield n
    n.stop()


def test_a_producer_token_posts_to_its_bus_over_https(node: TlsNode,
                                                      receiver: Receiver) -> None:
    url, path = receiver.endpoint(unique("tls"))
    source = f"/pytest/{unique('src')}"
    rule = {"pattern": {"source": [source]},
            "targets": [{"id": "rx", "type": "http", "endpoint": url}]}
    r = node.call("PUT", "/v1/buses/orders/rules/tls-rule", ADMIN, json=rule)
    assert r.status_code == 200, r.text

    binary = make_event(source, kind="json", typed_extensions=False)
    structured = make_event(source, kind="json", typed_extensions=True)
    batch = [make_event(source, kind="text", typed_extensions=True) for _ in range(3)]
    for msg in (to_binary(binary, JSON_FORMAT), to_structured(structured, JSON_FORMAT)):
        r = node.call("POST", "/v1/buses/orders/events", PRODUCER,
                      headers=dict(msg.headers), data=msg.body)
        assert r.status_code == 200, r.text
    r = node.call("POST", "/v1/buses/orders/events", PRODUCER,
                  headers={"content-type": BATCH_CT}, data=batch_body(batch))
    assert r.status_code == 200, r.text
    ids = [binary.get_id(), structured.get_id()] + [e.get_id() for e in batch]
    got = receiver.wait_for(path, ids)
    assert got[binary.get_id()].event.get_data() == binary.get_data()

    # Not another bus, not the rules.
    msg = to_structured(make_event(source, kind="json", typed_extensions=True), JSON_FORMAT)
    r = node.call("POST", "/v1/buses/billing/events", PRODUCER,
                  headers=dict(msg.headers), data=msg.body)
    assert r.status_code == 403, r.text
    assert r.json()["missingScope"] == "events:put:billing"
    assert "orders-producer" in r.json()["error"]["message"]
    r = node.call("PUT", "/v1/buses/orders/rules/evil", PRODUCER, json=rule)
    assert r.status_code == 403 and r.json()["missingScope"] == "admin", r.text
    r = node.call("DELETE", "/v1/buses/orders/rules/tls-rule", PRODUCER)
    assert r.status_code == 403, r.text


def test_read_tokens_read_and_unknown_tokens_are_refused(node: TlsNode) -> None:
    r = node.call("GET", "/v1/buses/orders/rules", READER)
    assert r.status_code == 200, r.text
    r = node.call("GET", "/metrics", READER)
    assert r.status_code == 200 and "strait_" in r.text
    r = node.call("GET", "/metrics", None)
    assert r.status_code == 401
    r = node.call("PUT", "/v1/buses/new-one", READER, json={})
    assert r.status_code == 403 and r.json()["missingScope"] == "admin", r.text
    msg = to_structured(make_event("/pytest/r", kind="json", typed_extensions=True),
                        JSON_FORMAT)
    r = node.call("POST", "/v1/buses/orders/events", READER,
                  headers=dict(msg.headers), data=msg.body)
    assert r.status_code == 403 and r.json()["missingScope"] == "events:put:orders"
    r = node.call("GET", "/v1/buses", "not-a-token")
    assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized"
    # The system's CAs do not vouch for this node.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(node.base + "/healthz", timeout=5)
    # The audit log names who changed what.
    log = tail(node.log, 200_000)
    assert "strait::audit" in log and 'token="orders-producer"' in log, log


def test_a_certificate_reissued_on_disk_is_served_without_restart(node: TlsNode) -> None:
    before = served_cert(node.port)
    node.issue()
    deadline = time.monotonic() + 10
    while served_cert(node.port) == before:
        assert time.monotonic() < deadline, f"old certificate still served:\n{tail(node.log)}"
        time.sleep(0.1)
    # Verified against the CA, with the same process.
    assert node.proc is not None and node.proc.poll() is None
    r = node.call("GET", "/v1/buses", READER)
    assert r.status_code == 200
    assert "HTTP TLS certificate reloaded" in tail(node.log, 200_000)


def set_tokens(node: TlsNode, tokens: list, keep_stamp: bool = False) -> None:
    """Write ``auth.tokens`` into the node's config file; with ``keep_stamp`` put
    the file's modification time back (the new text must be as long as the old),
    so that only SIGHUP makes the node read it."""
    cfg = json.loads(node.config.read_text())
    before = node.config.stat()
    old_len = len(node.config.read_bytes())
    cfg["auth"]["tokens"] = tokens
    node.config.write_text(json.dumps(cfg))
    if keep_stamp:
        assert len(node.config.read_bytes()) == old_len
        os.utime(node.config, ns=(before.st_atime_ns, before.st_mtime_ns))


def wait_status(node: TlsNode, token: str, status: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = node.call("GET", "/v1/buses", token)
        if r.status_code == status:
            return
        assert time.monotonic() < deadline, (
            f"token still answered {r.status_code}, wanted {status}:\n{tail(node.log)}")
        time.sleep(0.1)


ORIGINAL_TOKENS = [
    ADMIN,
    {"name": "orders-producer", "token": PRODUCER, "scopes": ["events:put:orders"]},
    {"name": "reader", "token": READER, "scopes": ["read"]},
]


def test_tokens_are_reloaded_when_the_config_file_changes(node: TlsNode) -> None:
    pid = node.proc.pid if node.proc else None
    added = "a-token-added-at-run-time"
    set_tokens(node, [ADMIN, {"name": "late", "token": added, "scopes": ["read"]}])
    wait_status(node, added, 200)
    # The reader token was removed from the file: refused, without a restart.
    wait_status(node, READER, 401)
    assert node.call("GET", "/v1/buses", ADMIN).status_code == 200
    # A file whose tokens are invalid is reported and the tokens in use stay.
    set_tokens(node, [{"name": "broken", "token": "x", "scopes": ["no-such-scope"]}])
    deadline = time.monotonic() + 15
    while "cannot be used; still using the previous tokens" not in tail(node.log, 200_000):
        assert time.monotonic() < deadline, tail(node.log)
        time.sleep(0.1)
    assert node.call("GET", "/v1/buses", added).status_code == 200
    set_tokens(node, ORIGINAL_TOKENS)
    wait_status(node, READER, 200)
    wait_status(node, added, 401)
    assert node.proc is not None and node.proc.pid == pid and node.proc.poll() is None


def test_sighup_reloads_the_tokens(node: TlsNode) -> None:
    first, second = "sighup-token-AAAA", "sighup-token-BBBB"
    set_tokens(node, ORIGINAL_TOKENS + [{"name": "hup", "token": first, "scopes": ["read"]}])
    wait_status(node, first, 200)
    # Same length, modification time put back: the file looks unchanged.
    set_tokens(node, ORIGINAL_TOKENS + [{"name": "hup", "token": second, "scopes": ["read"]}],
               keep_stamp=True)
    time.sleep(1.0)
    assert node.call("GET", "/v1/buses", second).status_code == 401, (
        "the node read the file without SIGHUP: this test cannot tell SIGHUP apart")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    wait_status(node, second, 200)
    wait_status(node, first, 401)
    assert node.proc.poll() is None
    set_tokens(node, ORIGINAL_TOKENS)
    wait_status(node, second, 401)


def test_certificate_expiry_is_a_metric_and_cert_show_flags_it(node: TlsNode,
                                                               tmp_path: Path) -> None:
    r = node.call("GET", "/metrics", READER)
    assert r.status_code == 200
    lines = [ln for ln in r.text.splitlines()
             if ln.startswith("strait_cert_not_after_seconds") and 'cert="http"' in ln]
    assert lines, r.text[:3000]
    not_after = float(lines[0].rsplit(" ", 1)[1])
    assert not_after > time.time() + 300 * 86400, lines
    # A certificate with 10 days left is flagged; a fresh one is not.
    short = tmp_path / "short"
    run(node.binary, "cert", "issue", "--ca", str(node.ca_dir), "--node-id", "7",
        "--site", "idc", "--days", "10", "--out", str(short))
    shown = run(node.binary, "cert", "show", str(short / "node-7.pem"))
    assert "EXPIRES SOON" in shown, shown
    shown = run(node.binary, "cert", "show", str(node.certs / "node-1.pem"))
    assert "status:" in shown and "EXPIRES" not in shown and "EXPIRED" not in shown, shown
