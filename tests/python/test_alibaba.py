"""Alibaba Cloud EventBridge compatibility, checked with the official Python SDK
``alibabacloud-eventbridge`` (see docs/adapters/alibaba.md):

* the SDK's ``put_events`` against Strait's ``POST /openapi/putEvents``: right key →
  accepted and delivered onward with attributes intact; wrong secret, unknown key,
  skewed clock → Alibaba's error shape; over the limits → the documented errors;
* Strait's ``alibaba_eventbridge`` target pointed at a local receiver that checks every
  request with the SDK's own signing utilities (``get_string_to_sign`` /
  ``get_signature`` from the installed ``alibabacloud_eventbridge_util``);
* 4xx and per-entry validation errors → dead letter; 5xx and throttling → retried, then
  delivered;
* the HTTP push source ``POST /alibaba/push/{bus}``: signature, replay window.

The end-to-end test Alibaba SDK → Strait → AWS EventBridge (moto) → SQS needs the AWS
target, which has not landed yet; it is the next step (docs/adapters/alibaba.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from alibabacloud_eventbridge import models as eb_models
from alibabacloud_eventbridge.client import Client as EventBridgeClient
from alibabacloud_eventbridge_util.client import Client as EventBridgeUtil
from alibabacloud_tea_util.client import Client as TeaUtil
from Tea.exceptions import TeaException
from Tea.request import TeaRequest

from strait_support import Receiver, StraitServer, describe, unique

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO / "adapters" / "src" / "alibaba_eventbridge" / "testdata"

INGRESS_ID = "LTAI-strait-ingress"
INGRESS_SECRET = "ingress-secret-" + uuid.uuid4().hex
TARGET_ID = "LTAI-strait-target"
TARGET_SECRET = "target-secret-" + uuid.uuid4().hex
CERT_URL = "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/test/public.pem"
WAIT_S = 30.0


# ---------------------------------------------------------------------------
# the Alibaba EventBridge stand-in that Strait's target delivers to
# ---------------------------------------------------------------------------


class AliRequest:
    def __init__(self, path: str, headers: dict[str, str], body: bytes, verified: bool,
                 sts: str):
        self.path = path
        self.headers = headers
        self.body = body
        self.verified = verified
        self.string_to_sign = sts
        try:
            self.events: list[dict[str, Any]] = json.loads(body)
        except ValueError:
            self.events = []

    @property
    def bus(self) -> str:
        return self.events[0].get("aliyuneventbusname", "") if self.events else ""


def sdk_verify(method: str, path: str, headers: dict[str, str], secret: str) -> tuple[bool, str]:
    """Check ``Authorization`` with the SDK's own string-to-sign and signature."""
    req = TeaRequest()
    req.method = method
    req.pathname = path.split("?")[0]
    req.headers = dict(headers)
    req.query = {}
    sts = EventBridgeUtil.get_string_to_sign(req)
    expected = f"acs:{TARGET_ID}:{EventBridgeUtil.get_signature(sts, secret)}"
    return hmac.compare_digest(headers.get("authorization", ""), expected), sts


class AliEventBridge:
    """Answers PutEvents like Alibaba EventBridge. Behaviour per Alibaba bus name:
    ``ok``; ``http400``; ``fail5xx:N`` (first N requests 500); ``entry-invalid``;
    ``entry-throttle:N`` (first N answers mark every entry throttled)."""

    def __init__(self) -> None:
        self.requests: list[AliRequest] = []
        self.behaviour: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok, sts = sdk_verify("POST", self.path, headers, TARGET_SECRET)
                req = AliRequest(self.path, headers, body, ok, sts)
                status, answer = outer.answer(req)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, req: AliRequest) -> tuple[int, dict[str, Any]]:
        rid = str(uuid.uuid4())
        with self.cond:
            self.requests.append(req)
            self.cond.notify_all()
            n = self.counts.get(req.bus, 0) + 1
            self.counts[req.bus] = n
            behaviour = self.behaviour.get(req.bus, "ok")
        if not req.verified:
            return 403, {"requestId": rid, "code": "SignatureDoesNotMatch",
                         "message": "signature mismatch", "httpCode": 403, "success": False}
        if behaviour == "http400":
            return 400, {"requestId": rid, "code": "InvalidArgument",
                         "message": "rejected by the test", "httpCode": 400, "success": False}
        if behaviour.startswith("fail5xx:") and n <= int(behaviour.split(":")[1]):
            return 500, {"requestId": rid, "code": "InternalError", "message": "try again"}
        entries = []
        failed = 0
        for e in req.events:
            entry: dict[str, Any] = {"EventId": e.get("id"), "TraceId": uuid.uuid4().hex}
            if behaviour == "entry-invalid":
                entry.update(ErrorCode="InvalidArgument", ErrorMessage="data is not allowed")
                failed += 1
            elif behaviour.startswith("entry-throttle:") and n <= int(behaviour.split(":")[1]):
                entry.update(ErrorCode="TooManyRequests", ErrorMessage="slow down")
                failed += 1
            entries.append(entry)
        return 200, {"RequestId": rid, "ResourceOwnerAccountId": "1",
                     "FailedEntryCount": failed, "EntryList": entries}

    def for_bus(self, bus: str) -> list[AliRequest]:
        with self.cond:
            return [r for r in self.requests if r.bus == bus]

    def wait_events(self, bus: str, ids: set[str], timeout: float = WAIT_S) -> list[AliRequest]:
        """Wait until every id was answered with success at least once."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                reqs = [r for r in self.requests if r.bus == bus]
                seen = {e.get("id") for r in reqs for e in r.events}
                if ids <= seen:
                    return reqs
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out: missing {sorted(ids - seen)} on {bus}")
                self.cond.wait(min(left, 0.5))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ali_strait(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StraitServer]:
    import os

    binary = os.environ.get("STRAIT_BIN", "")
    if not binary:
        pytest.fail("STRAIT_BIN is not set", pytrace=False)
    config = {
        "alibaba": {
            "credentials": {"main": {"access_key_id": TARGET_ID,
                                     "access_key_secret": TARGET_SECRET}},
            "ingress_keys": [{"access_key_id": INGRESS_ID,
                              "access_key_secret": INGRESS_SECRET}],
            "max_clock_skew_secs": 900,
            "account_id": "1234567890",
            "push": {"public_keys": {CERT_URL: str(TESTDATA / "push_test_key.pub.pem")},
                     "max_age_secs": 60},
        }
    }
    server = StraitServer(binary, Path(tmp_path_factory.mktemp("strait-ali")), config=config)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    rc = server.crashed()
    logs = server.logs()
    server.stop()
    if rc is not None:
        pytest.fail(f"strait died (exit status {rc})\n{logs}", pytrace=False)


@pytest.fixture(scope="module")
def alibaba() -> Iterator[AliEventBridge]:
    eb = AliEventBridge()
    yield eb
    eb.stop()


def sdk_client(strait: StraitServer, secret: str = INGRESS_SECRET,
               key_id: str = INGRESS_ID) -> EventBridgeClient:
    config = eb_models.Config(
        access_key_id=key_id,
        access_key_secret=secret,
        endpoint=f"127.0.0.1:{strait.port}",
        protocol="http",
        region_id="cn-hangzhou",
    )
    return EventBridgeClient(config)


def sdk_event(bus: str, source: str, **extra: Any) -> eb_models.CloudEvent:
    ext = {"aliyuneventbusname": bus, "myext": "hello wörld"}
    ext.update(extra.pop("extensions", {}))
    args: dict[str, Any] = dict(
        id=unique("ali"),
        source=source,
        type="oss:ObjectCreated:PostObject",
        subject="acs:oss:cn-hangzhou:1234567890:bucket/object.txt",
        time="2025-03-04T05:06:07.123Z",
        datacontenttype="application/json",
        extensions=ext,
        data=json.dumps({"bucket": "b", "size": 42, "name": "naïve ✓"}).encode(),
    )
    args.update(extra)
    return eb_models.CloudEvent(**args)


def new_bus(strait: StraitServer, prefix: str) -> str:
    bus = unique(prefix)
    strait.ensure_bus(bus)
    return bus


def http_rule(strait: StraitServer, bus: str, url: str, **target: Any) -> str:
    name = unique("rule")
    spec = {"pattern": {}, "targets": [
        {"id": "t", "type": "http", "endpoint": url, "mode": "structured", **target}]}
    strait.put_rule(bus, name, spec)
    return name


def ali_rule(strait: StraitServer, bus: str, alibaba: AliEventBridge, ali_bus: str,
             **target: Any) -> str:
    name = unique("rule")
    t = {"id": "aliyun", "type": "alibaba_eventbridge", "eventBus": ali_bus,
         "credential": "main", "regionId": "cn-hangzhou",
         "endpoint": f"http://127.0.0.1:{alibaba.port}"}
    t.update(target)
    strait.put_rule(bus, name, {"pattern": {}, "targets": [t]})
    return name


def post_batch(strait: StraitServer, bus: str, events: list[dict[str, Any]]) -> None:
    resp = strait.post_events({"content-type": "application/cloudevents-batch+json"},
                              json.dumps(events).encode(), bus)
    assert resp.status_code == 200, describe(resp)


def ce(source: str, **extra: Any) -> dict[str, Any]:
    e = {"specversion": "1.0", "id": unique("e"), "source": source, "type": "order.created",
         "subject": "orders/1", "myext": "x y", "datacontenttype": "application/json",
         "data": {"amount": 150, "note": "naïve ✓"}}
    e.update(extra)
    return e


# ---------------------------------------------------------------------------
# ingress: the SDK against POST /openapi/putEvents
# ---------------------------------------------------------------------------


def test_sdk_put_events_accepted_and_delivered(
    ali_strait: StraitServer, receiver: Receiver
) -> None:
    bus = new_bus(ali_strait, "ali-in")
    url, path = receiver.endpoint(unique("ali-in"))
    http_rule(ali_strait, bus, url)
    source = f"acs.oss.{unique('src')}"
    json_event = sdk_event(bus, source)
    # the SDK's default datacontenttype ("application/json; charset=utf-8") makes it
    # send the data as data_base64
    b64_event = sdk_event(bus, source, datacontenttype=None,
                          data=b'{"raw": true}')
    events = [json_event, b64_event]

    resp = sdk_client(ali_strait).put_events(events)

    assert resp.failed_entry_count == 0, resp.to_map()
    assert resp.request_id
    assert resp.resource_owner_account_id == "1234567890"
    assert [e.event_id for e in resp.entry_list] == [json_event.id, b64_event.id]
    assert all(not e.error_code for e in resp.entry_list)
    assert all(e.trace_id and len(e.trace_id) == 32 for e in resp.entry_list)

    got = receiver.wait_for(path, [e.id for e in events])
    d = got[json_event.id].event
    assert d is not None
    attrs = d.get_attributes()
    assert attrs["source"] == source
    assert attrs["type"] == "oss:ObjectCreated:PostObject"
    assert attrs["subject"] == "acs:oss:cn-hangzhou:1234567890:bucket/object.txt"
    assert attrs["myext"] == "hello wörld"
    assert attrs["aliyuneventbusname"] == bus
    assert attrs["datacontenttype"] == "application/json"
    t = attrs["time"]
    t = t.isoformat() if hasattr(t, "isoformat") else str(t)
    assert t.startswith("2025-03-04T05:06:07.123"), t
    assert d.get_data() == {"bucket": "b", "size": 42, "name": "naïve ✓"}
    assert "traceparent" in attrs
    raw = got[b64_event.id].event
    assert raw is not None
    assert raw.get_attributes()["datacontenttype"] == "application/json; charset=utf-8"
    data = raw.get_data()
    if isinstance(data, (bytes, bytearray)):
        data = json.loads(data)
    assert data == {"raw": True}

    # the same events again: idempotent, no error (dedup on bus, source, id)
    again = sdk_client(ali_strait).put_events([sdk_event(bus, source, id=json_event.id)])
    assert again.failed_entry_count == 0


def test_sdk_errors_have_alibaba_shape(ali_strait: StraitServer) -> None:
    bus = new_bus(ali_strait, "ali-err")

    with pytest.raises(TeaException) as wrong_secret:
        sdk_client(ali_strait, secret="not-the-secret").put_events(
            [sdk_event(bus, "acs.test")])
    e = wrong_secret.value
    assert e.code == "SignatureDoesNotMatch", e
    assert e.data["httpCode"] == 403
    assert e.data["success"] is False
    assert e.message.startswith(f"[EventBridgeError-{e.data['requestId']}]"), e.message

    with pytest.raises(TeaException) as unknown:
        sdk_client(ali_strait, key_id="LTAI-nobody").put_events([sdk_event(bus, "acs.test")])
    assert unknown.value.code == "InvalidAccessKeyId"

    # a Date far from the server's clock (the SDK takes it from this function)
    real = TeaUtil.get_date_utcstring
    try:
        TeaUtil.get_date_utcstring = staticmethod(  # type: ignore[method-assign]
            lambda: formatdate(time.time() - 3600, usegmt=True))
        with pytest.raises(TeaException) as skewed:
            sdk_client(ali_strait).put_events([sdk_event(bus, "acs.test")])
    finally:
        TeaUtil.get_date_utcstring = real  # type: ignore[method-assign]
    assert skewed.value.code == "RequestTimeTooSkewed"

    # no signature at all
    resp = requests.post(ali_strait.url("/openapi/putEvents"), data=b"[]",
                         headers={"content-type": "application/cloudevents-batch+json"},
                         timeout=10)
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == "MissingAuthorization" and body["requestId"], body


def test_sdk_batch_over_limits(ali_strait: StraitServer) -> None:
    bus = new_bus(ali_strait, "ali-lim")
    client = sdk_client(ali_strait)

    # 17 events: Alibaba takes at most 16 per PutEvents call
    with pytest.raises(TeaException) as too_many:
        client.put_events([sdk_event(bus, "acs.test") for _ in range(17)])
    assert too_many.value.code == "TooManyEvents"
    assert too_many.value.data["httpCode"] == 400
    assert "16" in too_many.value.data["message"]

    # 16 is fine
    ok = client.put_events([sdk_event(bus, "acs.test") for _ in range(16)])
    assert ok.failed_entry_count == 0

    # one event over 64 KB: that entry fails, the others are accepted
    big = sdk_event(bus, "acs.test", data=json.dumps({"x": "y" * 70_000}).encode())
    small = sdk_event(bus, "acs.test")
    unknown_bus = sdk_event(bus, "acs.test", extensions={"aliyuneventbusname": "no-such-bus"})
    resp = client.put_events([small, big, unknown_bus])
    assert resp.failed_entry_count == 2, resp.to_map()
    codes = [e.error_code for e in resp.entry_list]
    assert codes[0] in (None, "")
    assert codes[1] == "EventTooLarge" and "65536" in resp.entry_list[1].error_message
    assert codes[2] == "EventBusNotExist"

    # a request body over 256 KB
    with pytest.raises(TeaException) as too_big:
        client.put_events([sdk_event(bus, "acs.test",
                                     data=json.dumps({"x": "z" * 30_000}).encode())
                           for _ in range(10)])
    assert too_big.value.code == "RequestTooLarge"
    assert too_big.value.data["httpCode"] == 413


# ---------------------------------------------------------------------------
# target: Strait → Alibaba EventBridge (local stand-in, SDK-verified)
# ---------------------------------------------------------------------------


def test_target_requests_verify_with_sdk_signing(
    ali_strait: StraitServer, alibaba: AliEventBridge
) -> None:
    bus = new_bus(ali_strait, "ali-out")
    ali_bus = unique("aliyun-bus")
    ali_rule(ali_strait, bus, alibaba, ali_bus)
    source = f"/strait/{unique('src')}"
    events = [ce(source) for _ in range(40)]
    post_batch(ali_strait, bus, events)

    reqs = alibaba.wait_events(ali_bus, {e["id"] for e in events})
    assert reqs
    for r in reqs:
        assert r.verified, f"signature does not verify with the SDK:\n{r.string_to_sign!r}\n{r.headers}"
        h = r.headers
        assert r.path == "/openapi/putEvents"
        assert h["content-type"] == "application/cloudevents-batch+json; charset=utf-8"
        assert h["accept"] == "application/json"
        assert h["x-acs-signature-method"] == "HMAC-SHA1"
        assert h["x-acs-signature-version"] == "1.0"
        assert h["x-eventbridge-version"] == "2015-06-06"
        assert h["x-eventbridge-regionid"] == "cn-hangzhou"
        assert h["host"] == f"127.0.0.1:{alibaba.port}"
        assert len(h["x-acs-signature-nonce"]) >= 16
        assert h["authorization"].startswith(f"acs:{TARGET_ID}:")
        assert "content-md5" not in h
        # an RFC 1123 date, as TeaUtil.get_date_utcstring() makes it
        assert h["date"].endswith(" GMT") and len(h["date"]) == 29, h["date"]
        assert 1 <= len(r.events) <= 16
        assert len(r.body) <= 256 * 1024
    # a wrong secret would not verify: the check is not vacuous
    ok, _ = sdk_verify("POST", reqs[0].path, reqs[0].headers, "other-secret")
    assert not ok
    nonces = [r.headers["x-acs-signature-nonce"] for r in reqs]
    assert len(set(nonces)) == len(nonces)
    # every event arrived once, attributes intact, on the configured Alibaba bus
    sent = {e["id"]: e for e in events}
    got = {e["id"]: e for r in reqs for e in r.events}
    assert set(got) == set(sent)
    for eid, e in got.items():
        assert e["aliyuneventbusname"] == ali_bus
        for k in ("specversion", "source", "type", "subject", "myext", "datacontenttype", "data"):
            assert e[k] == sent[eid][k], (k, e)
        assert e["traceparent"].startswith("00-")
    # 40 events went out in batches, not one request each
    assert len(reqs) < 40


def dlq_rule(strait: StraitServer, receiver: Receiver) -> tuple[str, str]:
    dlq = new_bus(strait, "ali-dlq")
    url, path = receiver.endpoint(unique("ali-dlq"))
    http_rule(strait, dlq, url)
    return dlq, path


@pytest.mark.parametrize("behaviour", ["http400", "entry-invalid"])
def test_target_permanent_error_goes_to_dead_letter(
    ali_strait: StraitServer, alibaba: AliEventBridge, receiver: Receiver, behaviour: str
) -> None:
    bus = new_bus(ali_strait, "ali-4xx")
    ali_bus = unique("aliyun-4xx")
    alibaba.behaviour[ali_bus] = behaviour
    dlq, dlq_path = dlq_rule(ali_strait, receiver)
    ali_rule(ali_strait, bus, alibaba, ali_bus,
             retry={"maxAttempts": 5, "initialBackoffMs": 50, "maxBackoffMs": 200},
             deadLetter={"type": "bus", "bus": dlq})
    event = ce(f"/strait/{unique('src')}")
    post_batch(ali_strait, bus, [event])

    got = receiver.wait_for(dlq_path, [event["id"]])
    attrs = got[event["id"]].event.get_attributes()
    assert attrs["deadlettertarget"] == "aliyun"
    assert "permanent failure" in attrs["deadletterreason"]
    assert "InvalidArgument" in attrs["deadletterreason"]
    assert int(attrs["deadletterattempts"]) == 1
    # not retried: exactly one PutEvents call carried it
    assert len(alibaba.for_bus(ali_bus)) == 1


def test_target_oversized_event_goes_to_dead_letter(
    ali_strait: StraitServer, alibaba: AliEventBridge, receiver: Receiver
) -> None:
    bus = new_bus(ali_strait, "ali-big")
    ali_bus = unique("aliyun-big")
    dlq, dlq_path = dlq_rule(ali_strait, receiver)
    ali_rule(ali_strait, bus, alibaba, ali_bus, deadLetter={"type": "bus", "bus": dlq})
    event = ce(f"/strait/{unique('src')}", data={"x": "y" * 70_000})
    post_batch(ali_strait, bus, [event])
    got = receiver.wait_for(dlq_path, [event["id"]])
    reason = got[event["id"]].event.get_attributes()["deadletterreason"]
    assert "65536" in reason, reason
    assert alibaba.for_bus(ali_bus) == []


@pytest.mark.parametrize("behaviour", ["fail5xx:2", "entry-throttle:2"])
def test_target_retryable_error_is_retried_then_delivered(
    ali_strait: StraitServer, alibaba: AliEventBridge, receiver: Receiver, behaviour: str
) -> None:
    bus = new_bus(ali_strait, "ali-5xx")
    ali_bus = unique("aliyun-5xx")
    alibaba.behaviour[ali_bus] = behaviour
    dlq, dlq_path = dlq_rule(ali_strait, receiver)
    rule = ali_rule(ali_strait, bus, alibaba, ali_bus,
                    retry={"maxAttempts": 10, "initialBackoffMs": 50, "maxBackoffMs": 200},
                    deadLetter={"type": "bus", "bus": dlq})
    event = ce(f"/strait/{unique('src')}")
    post_batch(ali_strait, bus, [event])

    deadline = time.monotonic() + WAIT_S
    while True:
        resp = ali_strait.request("GET", f"/v1/buses/{bus}/rules/{rule}")
        status = resp.json()["status"]["targets"]["aliyun"]
        if status["delivered"] >= 1:
            break
        assert time.monotonic() < deadline, f"not delivered: {resp.text}"
        time.sleep(0.1)
    reqs = alibaba.for_bus(ali_bus)
    assert len(reqs) == 3, [r.events for r in reqs]
    assert all(r.verified for r in reqs)
    assert all(e["id"] == event["id"] for r in reqs for e in r.events)
    assert status["deadLettered"] == 0
    assert status["failedAttempts"] == 2
    assert receiver.deliveries(dlq_path) == []


def test_target_needs_a_known_credential_and_valid_settings(ali_strait: StraitServer) -> None:
    bus = new_bus(ali_strait, "ali-cfg")
    resp = ali_strait.request("PUT", f"/v1/buses/{bus}/rules/r", json={
        "pattern": {}, "targets": [{"id": "a", "type": "alibaba_eventbridge",
                                    "eventBus": "b", "credential": "main",
                                    "maxBatchEvents": 17, "endpoint": "http://127.0.0.1:1"}]})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("targets[0].maxBatchEvents"), resp.text
    resp = ali_strait.request("PUT", f"/v1/buses/{bus}/rules/r", json={
        "pattern": {}, "targets": [{"id": "a", "type": "alibaba_eventbridge",
                                    "eventBus": "b", "credential": "main",
                                    "accessKeySecret": "nope",
                                    "endpoint": "http://127.0.0.1:1"}]})
    assert resp.status_code == 400 and "accessKeySecret" in resp.text


# ---------------------------------------------------------------------------
# HTTP push source: what Alibaba EventBridge pushes to HTTP targets
# ---------------------------------------------------------------------------


def _test_key() -> dict[str, int]:
    k = json.loads((TESTDATA / "push_test_key.json").read_text())
    return {"n": int(k["n"]), "e": int(k["e"]), "d": int(k["d"])}


def rsa_private_encrypt(secret: bytes) -> bytes:
    """PKCS#1 v1.5 block type 1 with the test key's private exponent (what Alibaba
    does with its own key for x-eventbridge-signature-secret)."""
    k = _test_key()
    size = (k["n"].bit_length() + 7) // 8
    block = b"\x00\x01" + b"\xff" * (size - 3 - len(secret)) + b"\x00" + secret
    return pow(int.from_bytes(block, "big"), k["d"], k["n"]).to_bytes(size, "big")


def push_headers(url: str, body: bytes, *, ts_ms: int | None = None,
                 cert_url: str = CERT_URL, secret: bytes | None = None) -> dict[str, str]:
    secret = secret or uuid.uuid4().hex.encode()
    h = {
        "x-eventbridge-signature-timestamp": str(ts_ms if ts_ms is not None
                                                 else int(time.time() * 1000)),
        "x-eventbridge-signature-method": "HMAC-SHA1",
        "x-eventbridge-signature-version": "1.0",
        "x-eventbridge-signature-url": cert_url,
        "x-eventbridge-signature-token": uuid.uuid4().hex,
    }
    sts = url + "\n" + "".join(f"{k}: {v}\n" for k, v in h.items()) + body.decode() + "\n"
    h["x-eventbridge-signature-secret"] = base64.b64encode(rsa_private_encrypt(secret)).decode()
    h["x-eventbridge-signature"] = base64.b64encode(
        hmac.new(secret, sts.encode(), hashlib.sha1).digest()).decode()
    h["content-type"] = "application/json"
    return h


def test_push_source_verifies_signature_and_replay_window(
    ali_strait: StraitServer, receiver: Receiver
) -> None:
    bus = new_bus(ali_strait, "ali-push")
    url, path = receiver.endpoint(unique("ali-push"))
    http_rule(ali_strait, bus, url)
    push_url = ali_strait.url(f"/alibaba/push/{bus}")
    event = ce("acs.oss", aliyuneventbusname="default", aliyunregionid="cn-hangzhou")
    body = json.dumps(event).encode()

    resp = requests.post(push_url, data=body, headers=push_headers(push_url, body), timeout=10)
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["results"] == [{"id": event["id"], "status": "accepted"}]
    got = receiver.wait_for(path, [event["id"]])
    attrs = got[event["id"]].event.get_attributes()
    assert attrs["aliyunregionid"] == "cn-hangzhou" and attrs["myext"] == "x y"

    def rejected(headers: dict[str, str], data: bytes, code: str) -> None:
        r = requests.post(push_url, data=data, headers=headers, timeout=10)
        assert r.status_code == 401, describe(r)
        assert r.json()["error"]["code"] == code, r.text

    other = json.dumps(ce("acs.oss")).encode()
    rejected(push_headers(push_url, body), other, "SignatureDoesNotMatch")  # body swapped
    rejected(push_headers(push_url, other, ts_ms=int(time.time() * 1000) - 120_000), other,
             "RequestExpired")
    rejected(push_headers(push_url, other, cert_url="https://evil.example.com/k.pem"), other,
             "UntrustedSigningKey")
    rejected({"content-type": "application/json"}, other, "InvalidSignature")
    forged = push_headers(push_url, other)
    forged["x-eventbridge-signature-secret"] = base64.b64encode(b"\x01" * 256).decode()
    rejected(forged, other, "SignatureDoesNotMatch")
    # a batch push, signed: both accepted
    two = [ce("acs.oss"), ce("acs.oss")]
    data = json.dumps(two).encode()
    r = requests.post(push_url, data=data, headers=push_headers(push_url, data), timeout=10)
    assert r.status_code == 200, describe(r)
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted"]
