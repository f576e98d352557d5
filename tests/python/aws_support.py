"""Helpers for the AWS tests: a real ``moto_server`` (from this venv, free port) and a
small recording proxy in front of it that counts PutEvents calls and keeps their entries.

moto is the AWS peer here; a test that needs it fails loudly if it cannot start it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import requests

from strait_support import free_port, tail

REGION = "us-east-1"
MOTO_KEY = "testing"
MOTO_SECRET = "testing"
MOTO_ACCOUNT = "123456789012"


def moto_server_binary() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("moto_server")
    if not found:
        raise RuntimeError(
            f"moto_server is not installed next to {sys.executable} nor on PATH: "
            "run scripts/setup-test-deps (tests/python/requirements.txt has moto[server])"
        )
    return found


class Moto:
    """One ``moto_server`` process on a fixed port (restartable: state is lost)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = moto_server_binary()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                requests.get(f"{self.url}/moto-api/", timeout=1)
                return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not answer within 30s:\n{tail(self.log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_SECRET)

    def bus_to_queue(self, bus: str, queue: str, pattern: dict[str, Any]) -> str:
        """Create (if needed) an EventBridge bus, a queue and a rule bus → queue; the URL."""
        events, sqs = self.client("events"), self.client("sqs")
        if bus != "default":
            try:
                events.create_event_bus(Name=bus)
            except events.exceptions.ResourceAlreadyExistsException:
                pass
        url = sqs.create_queue(QueueName=queue)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        rule = f"to-{queue}"[:64]
        events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
        events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
        return url

    def drain(self, url: str, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Receive (and delete) until ``want`` messages were read; their parsed bodies."""
        sqs = self.client("sqs")
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for m in resp.get("Messages", []):
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return got


class RecordingProxy:
    """Forwards every request to ``backend`` and records PutEvents requests."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.put_events: list[dict[str, Any]] = []
        # While set, answer 503 ServiceUnavailable instead of forwarding.
        self.hold = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                target = self.headers.get("x-amz-target", "")
                if target == "AWSEvents.PutEvents":
                    with proxy.lock:
                        proxy.put_events.append(json.loads(body))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("content-length", "connection")}
                if proxy.hold:
                    data = b'{"__type": "ServiceUnavailable", "message": "restarting"}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                try:
                    resp = requests.post(proxy.backend + self.path, data=body, headers=headers,
                                         timeout=30)
                    status, data, ctype = resp.status_code, resp.content, resp.headers.get(
                        "content-type", "application/json")
                except requests.RequestException as exc:
                    status, data, ctype = 502, str(exc).encode(), "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls_for_bus(self, bus: str) -> list[list[dict[str, Any]]]:
        with self.lock:
            return [req["Entries"] for req in self.put_events
                    if req["Entries"] and req["Entries"][0].get("EventBusName") == bus]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def metric(text: str, name: str) -> float:
    """Sum of all samples of a Prometheus metric in ``text``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
