"""Replayed signed requests on a three-node site (``strait local up``), with the
official clients: the Alibaba EventBridge SDK against ``POST /openapi/putEvents``
(``alibaba.require_nonce``) and boto3 against the SigV4 PutEvents ingress
(``aws.replay_cache``). Each request is captured on its way to node 1 by a small
forwarding proxy and sent again, byte for byte:

* to another node of the site: refused (the nonce is used site-wide);
* to every node after the whole site restarted: still refused (the nonces are in
  the site's replicated state, not in a process's memory);
* the event of the captured request is stored; a new request signed by the SDK
  is accepted at any node.

And certificates over time on the same site: node 2's cluster certificate
re-issued on disk is loaded without a restart (expiry metric and status follow).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
import requests
from botocore.config import Config

from strait_support import tail, unique
from test_alibaba import INGRESS_ID, INGRESS_SECRET, sdk_event
from alibabacloud_eventbridge import models as eb_models
from alibabacloud_eventbridge.client import Client as EventBridgeClient

AWS_KEY = "AKIDREPLAYTEST"
AWS_SECRET = "replay-test-secret"
REGION = "us-east-1"


class Captured:
    def __init__(self, path: str, headers: dict[str, str], body: bytes) -> None:
        self.path = path
        self.headers = headers
        self.body = body

    def send(self, base: str) -> requests.Response:
        return requests.post(base + self.path, headers=self.headers, data=self.body,
                             timeout=30)


class CaptureProxy:
    """Forwards POSTs to ``backend`` and keeps each request as it was sent."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.captured: list[Captured] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("content-length", "connection")}
                proxy.captured.append(Captured(self.path, headers, body))
                resp = requests.post(proxy.backend + self.path, data=body, headers=headers,
                                     timeout=30)
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Site:
    """``strait local up`` of one site of three nodes in ``dir``."""

    def __init__(self, binary: str, dir: Path) -> None:
        self.binary = binary
        self.dir = dir
        self.extra = dir / "extra.json"
        dir.mkdir(parents=True, exist_ok=True)
        self.extra.write_text(json.dumps({
            "alibaba": {
                "ingress_keys": [{"access_key_id": INGRESS_ID,
                                  "access_key_secret": INGRESS_SECRET}],
                "require_nonce": True,
            },
            "aws": {
                "ingress_keys": [{"access_key_id": AWS_KEY,
                                  "secret_access_key": AWS_SECRET}],
                "replay_cache": True,
            },
        }))
        self.urls: list[str] = []

    def run(self, *args: str) -> None:
        out = subprocess.run([self.binary, "local", *args], capture_output=True, text=True,
                             timeout=180)
        assert out.returncode == 0, (
            f"strait local {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}\n"
            + self.logs())

    def up(self, first: bool) -> None:
        args = ["up", "--dir", str(self.dir), "--extra", str(self.extra)]
        if first:
            args += ["--site", "idc:3"]
        self.run(*args)
        cluster = json.loads((self.dir / "cluster.json").read_text())
        self.nodes = sorted(cluster["nodes"], key=lambda n: n["id"])
        self.urls = [f"http://{n['http']}" for n in self.nodes]

    def down(self) -> None:
        self.run("down", "--dir", str(self.dir))

    def logs(self) -> str:
        out = []
        for n in getattr(self, "nodes", []):
            out.append(f"--- node {n['id']} ({n['log']}) ---\n{tail(Path(n['log']), 3000)}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    binary = os.environ.get("STRAIT_BIN", "")
    if not binary:
        pytest.fail("STRAIT_BIN is not set", pytrace=False)
    s = Site(binary, Path(tmp_path_factory.mktemp("replay-site")))
    s.up(first=True)
    yield s
    s.run("down", "--dir", str(s.dir))


def ali_client(url: str) -> EventBridgeClient:
    return EventBridgeClient(eb_models.Config(
        access_key_id=INGRESS_ID, access_key_secret=INGRESS_SECRET,
        endpoint=url.removeprefix("http://"), protocol="http", region_id="cn-hangzhou"))


def aws_client(url: str) -> Any:
    return boto3.client("events", endpoint_url=url, region_name=REGION,
                        aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_SECRET,
                        config=Config(retries={"total_max_attempts": 1}))


def wait_until(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def create_bus(urls: list[str], bus: str) -> None:
    r = requests.put(f"{urls[0]}/v1/buses/{bus}", json={"description": "replay"}, timeout=30)
    assert r.status_code == 200, r.text
    for url in urls:
        wait_until(f"bus {bus} at {url}", lambda: requests.get(
            f"{url}/v1/buses/{bus}", timeout=10).status_code == 200)


def stored(url: str, bus: str, event_id: str, source: str) -> bool:
    r = requests.get(f"{url}/v1/buses/{bus}/events/{event_id}",
                     params={"source": source}, timeout=30)
    return r.status_code == 200


def test_replayed_signed_requests_are_refused_at_every_node_and_after_a_restart(
    site: Site,
) -> None:
    bus = unique("replay")
    create_bus(site.urls, bus)

    # Alibaba: one PutEvents through the capturing proxy to node 1.
    proxy = CaptureProxy(site.urls[0])
    try:
        event = sdk_event(bus, "/replay")
        resp = ali_client(proxy.url).put_events([event])
        assert resp.failed_entry_count == 0, resp.to_map()
        aws_resp = aws_client(proxy.url).put_events(Entries=[{
            "Source": "replay.test", "DetailType": "t", "Detail": "{}",
            "EventBusName": bus}])
        assert aws_resp["FailedEntryCount"] == 0, aws_resp
    finally:
        proxy.stop()
    ali_req = next(c for c in proxy.captured if c.path.startswith("/openapi/putEvents"))
    aws_req = next(c for c in proxy.captured if "x-amz-target" in
                   {k.lower() for k in c.headers})
    assert "x-acs-signature-nonce" in {k.lower() for k in ali_req.headers}

    def refused_everywhere(when: str) -> None:
        for i, url in enumerate(site.urls):
            r = ali_req.send(url)
            assert r.status_code == 403, f"{when}, node {i + 1}: {r.status_code} {r.text}"
            assert r.json()["code"] == "SignatureNonceUsed", f"{when}: {r.text}"
            r = aws_req.send(url)
            assert r.status_code == 400, f"{when}, node {i + 1}: {r.status_code} {r.text}"
            assert "already used" in r.json()["message"], f"{when}: {r.text}"

    # At another node of the site, and at the node that took it.
    refused_everywhere("before the restart")

    # The whole site restarts: the nonces are in its replicated state.
    site.down()
    site.up(first=False)
    refused_everywhere("after the restart")

    # The event was stored once, and new signed requests are accepted anywhere.
    wait_until("the event at node 2", lambda: stored(site.urls[1], bus, event.id, "/replay"))
    for url in site.urls:
        fresh = ali_client(url).put_events([sdk_event(bus, "/replay")])
        assert fresh.failed_entry_count == 0, fresh.to_map()
        again = aws_client(url).put_events(Entries=[{
            "Source": "replay.test", "DetailType": "t", "Detail": "{}",
            "EventBusName": bus}])
        assert again["FailedEntryCount"] == 0, again


def cert_metric(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("strait_cert_not_after_seconds") and 'cert="node"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no strait_cert_not_after_seconds{cert=\"node\"} in /metrics")


def test_a_node_certificate_rotated_on_disk_is_used_without_restart(site: Site) -> None:
    """Node 2's cluster certificate is re-issued (100 days instead of 365) in place:
    node 2 loads it into its QUIC endpoint without a restart, its expiry metric and
    ``cluster status`` follow, and the site goes on committing through node 2."""
    cluster = json.loads((site.dir / "cluster.json").read_text())
    ca = Path(cluster["certsDir"])
    node2 = site.nodes[1]
    certs = Path(node2["config"]).parent / "certs"  # where `local up` put its certificate
    assert (certs / "node-2.pem").exists(), sorted(certs.parent.iterdir())
    before = cert_metric(site.urls[1])
    out = subprocess.run(
        [site.binary, "cert", "issue", "--ca", str(ca), "--node-id", "2", "--site", "idc",
         "--ip", "127.0.0.1", "--dns", "localhost", "--days", "100", "--out", str(certs)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_until("node 2 to reload its certificate", lambda: "node certificate reloaded"
               in tail(Path(node2["log"]), 200_000))
    after = cert_metric(site.urls[1])
    assert after < before - 200 * 86400, (before, after)
    status = requests.get(f"{site.urls[1]}/v1/cluster", timeout=10).json()
    assert status["certificate"]["expiresInDays"] in (99, 100), status["certificate"]
    # Same process, and the site still commits through node 2.
    assert node2["pid"] and Path(f"/proc/{node2['pid']}").exists()
    bus = unique("rotated")
    create_bus(site.urls, bus)
    fresh = ali_client(site.urls[1]).put_events([sdk_event(bus, "/rotated")])
    assert fresh.failed_entry_count == 0, fresh.to_map()
