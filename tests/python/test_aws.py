"""AWS in both directions against a real moto server (see docs/adapters/aws.md):

* the ``aws_eventbridge`` target: Strait rule → moto bus → moto rule → SQS queue, read
  with boto3; batching (25 events in 3 PutEvents calls, counted by a recording proxy in
  front of moto), oversized entries dead-lettered, moto stopped and restarted;
* the ``aws_sqs`` target;
* the SQS source: moto bus → queue (provisioned by Strait) → Strait bus → HTTP
  receiver, with Strait SIGKILLed between commit and delete;
* the AWS-compatible PutEvents ingress driven by boto3: per-entry results and the AWS
  error codes for a wrong secret, an unknown key, a stale date and 11 entries;
* end to end: Alibaba SDK → Strait ``/openapi/putEvents`` → ``aws_eventbridge`` → moto
  → SQS.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import boto3
import botocore.auth
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from aws_support import MOTO_KEY, MOTO_SECRET, REGION, Moto, RecordingProxy, metric
from strait_support import Receiver, StraitServer, describe, unique
from test_alibaba import INGRESS_ID, INGRESS_SECRET, sdk_client, sdk_event

INGRESS_KEY = "AKIDSTRAITTEST"
INGRESS_KEY_SECRET = "strait-ingress-secret"
WAIT_S = 40.0


def strait_binary() -> str:
    binary = os.environ.get("STRAIT_BIN", "")
    if not binary:
        pytest.fail("STRAIT_BIN is not set", pytrace=False)
    return binary


def aws_config(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "limits": {"max_event_bytes": 1024 * 1024, "max_request_bytes": 4 * 1024 * 1024},
        "aws": {
            "credentials": {"moto": {"access_key_id": MOTO_KEY, "secret_access_key": MOTO_SECRET}},
            "ingress_keys": [{"access_key_id": INGRESS_KEY,
                              "secret_access_key": INGRESS_KEY_SECRET}],
            "account_id": "111122223333",
        },
        "alibaba": {
            "ingress_keys": [{"access_key_id": INGRESS_ID, "access_key_secret": INGRESS_SECRET}],
        },
    }
    if extra:
        cfg["aws"].update(extra)
    return cfg


def start_strait(path: Path, config: dict[str, Any]) -> StraitServer:
    server = StraitServer(strait_binary(), path, config=config)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    m = Moto(Path(tmp_path_factory.mktemp("moto")))
    try:
        m.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start moto_server: {exc}", pytrace=False)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def proxy(moto: Moto) -> Iterator[RecordingProxy]:
    p = RecordingProxy(moto.url)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def aws_strait(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StraitServer]:
    server = start_strait(Path(tmp_path_factory.mktemp("strait-aws")), aws_config())
    yield server
    rc = server.crashed()
    logs = server.logs()
    server.stop()
    if rc is not None:
        pytest.fail(f"strait died (exit status {rc})\n{logs}", pytrace=False)


def new_bus(strait: StraitServer, prefix: str) -> str:
    bus = unique(prefix)
    strait.ensure_bus(bus)
    return bus


def ce(source: str, **extra: Any) -> dict[str, Any]:
    e = {"specversion": "1.0", "id": unique("e"), "source": source, "type": "order.created",
         "datacontenttype": "application/json", "data": {"amount": 150, "note": "naïve ✓"}}
    e.update(extra)
    return e


def traceparent() -> tuple[str, str]:
    import uuid
    trace = uuid.uuid4().hex
    return f"00-{trace}-{uuid.uuid4().hex[:16]}-01", trace


def post_batch(strait: StraitServer, bus: str, events: list[dict[str, Any]]) -> None:
    resp = strait.post_events({"content-type": "application/cloudevents-batch+json"},
                              json.dumps(events).encode(), bus)
    assert resp.status_code == 200, describe(resp)


def eb_rule(strait: StraitServer, bus: str, endpoint: str, aws_bus: str,
            **target: Any) -> str:
    name = unique("rule")
    t = {"id": "aws", "type": "aws_eventbridge", "eventBus": aws_bus, "credential": "moto",
         "region": REGION, "endpoint": endpoint}
    t.update(target)
    strait.put_rule(bus, name, {"pattern": {}, "targets": [t]})
    return name


def http_rule(strait: StraitServer, bus: str, url: str) -> str:
    name = unique("rule")
    strait.put_rule(bus, name, {"pattern": {}, "targets": [
        {"id": "t", "type": "http", "endpoint": url, "mode": "structured"}]})
    return name


def provisioned(events: Any, bus: str) -> bool:
    """True once every rule on `bus` has a target."""
    rules = events.list_rules(EventBusName=bus)["Rules"]
    return bool(rules) and all(
        events.list_targets_by_rule(Rule=r["Name"], EventBusName=bus)["Targets"]
        for r in rules)


def wait_checkpointed(strait: StraitServer, bus: str, rule: str, target: str = "t") -> None:
    """Wait until the target has nothing left to deliver and its cursor is
    replicated (a checkpoint wrote it): a restart then resumes past it."""
    deadline = time.monotonic() + WAIT_S
    while True:
        resp = strait.request("GET", f"/v1/buses/{bus}/rules/{rule}")
        assert resp.status_code == 200, resp.text
        st = resp.json()["status"]["targets"][target]
        if st["lag"] == 0 and st["checkpoint"] == st["cursor"]:
            return
        assert time.monotonic() < deadline, f"target not checkpointed: {st}\n{strait.logs()}"
        time.sleep(0.1)


def metrics_text(strait: StraitServer) -> str:
    return strait.request("GET", "/metrics").text


# ---------------------------------------------------------------------------
# Strait → AWS EventBridge
# ---------------------------------------------------------------------------


def test_eventbridge_target_maps_and_batches(
    aws_strait: StraitServer, moto: Moto, proxy: RecordingProxy
) -> None:
    bus = new_bus(aws_strait, "aws-out")
    aws_bus = unique("eb")
    queue = moto.bus_to_queue(aws_bus, unique("q"), {"source": [{"prefix": "/strait/"}]})
    eb_rule(aws_strait, bus, proxy.url, aws_bus, resourcesAttribute="subject",
            maxBatchDelayMs=300, concurrency=64)
    source = f"/strait/{unique('src')}"
    events = []
    traces = {}
    for i in range(25):
        tp, trace = traceparent()
        e = ce(source, subject=f"arn:aws:s3:::bucket/{i}", traceparent=tp,
               time="2026-01-02T03:04:05Z", data={"i": i, "note": "naïve ✓"})
        traces[e["id"]] = trace
        events.append(e)
    post_batch(aws_strait, bus, events)

    got = moto.drain(queue, 25, WAIT_S)
    assert len(got) == 25, f"{len(got)} of 25 events reached the queue\n{aws_strait.logs()}"
    by_i = {m["detail"]["i"]: m for m in got}
    assert sorted(by_i) == list(range(25))
    for i, m in by_i.items():
        assert m["source"] == source
        assert m["detail-type"] == "order.created"
        assert m["detail"] == {"i": i, "note": "naïve ✓"}
        assert m["resources"] == [f"arn:aws:s3:::bucket/{i}"]
        assert m["time"] == "2026-01-02T03:04:05Z"

    calls = proxy.calls_for_bus(aws_bus)
    assert sorted(len(c) for c in calls) == [5, 10, 10], [len(c) for c in calls]
    # TraceHeader: the X-Ray form of the delivery's trace context (same trace id)
    entries = [e for c in calls for e in c]
    by_detail = {json.loads(e["Detail"])["i"]: e for e in entries}
    for e in events:
        th = by_detail[e["data"]["i"]]["TraceHeader"]
        trace = traces[e["id"]]
        assert th.startswith(f"Root=1-{trace[:8]}-{trace[8:]};Parent="), th
        assert th.endswith(";Sampled=1"), th


def dlq_rule(strait: StraitServer, receiver: Receiver) -> tuple[str, str]:
    dlq = new_bus(strait, "aws-dlq")
    url, path = receiver.endpoint(unique("aws-dlq"))
    http_rule(strait, dlq, url)
    return dlq, path


def test_oversized_entry_is_dead_lettered(
    aws_strait: StraitServer, moto: Moto, proxy: RecordingProxy, receiver: Receiver
) -> None:
    bus = new_bus(aws_strait, "aws-big")
    aws_bus = unique("eb-big")
    queue = moto.bus_to_queue(aws_bus, unique("q"), {"source": [{"prefix": "/strait/"}]})
    dlq, dlq_path = dlq_rule(aws_strait, receiver)
    eb_rule(aws_strait, bus, proxy.url, aws_bus, deadLetter={"type": "bus", "bus": dlq})
    source = f"/strait/{unique('src')}"
    big = ce(source, data={"x": "y" * 300_000})
    small = ce(source)
    post_batch(aws_strait, bus, [big, small])
    got = receiver.wait_for(dlq_path, [big["id"]], WAIT_S)
    attrs = got[big["id"]].event.get_attributes()
    assert "entry too large for AWS EventBridge" in attrs["deadletterreason"], attrs
    assert "262144" in attrs["deadletterreason"]
    assert int(attrs["deadletterattempts"]) == 1
    msgs = moto.drain(queue, 1, WAIT_S)
    assert [m["detail"] for m in msgs] == [small["data"]]
    assert all(len(c) == 1 for c in proxy.calls_for_bus(aws_bus))


def test_moto_down_then_back_everything_delivered(
    aws_strait: StraitServer, tmp_path: Path
) -> None:
    """moto is stopped while events flow: PutEvents fails (connection refused behind
    the proxy), Strait retries with backoff, and after moto is back every event arrives.
    A restarted moto has lost its state, so the proxy answers 503 (as a restarting
    service would) until the bus, rule and queue exist again."""
    moto = Moto(tmp_path)
    try:
        moto.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start moto_server: {exc}", pytrace=False)
    proxy = RecordingProxy(moto.url)
    try:
        bus = new_bus(aws_strait, "aws-down")
        aws_bus = unique("eb-down")
        pattern = {"source": [{"prefix": "/strait/"}]}
        queue_name = unique("q")
        moto.bus_to_queue(aws_bus, queue_name, pattern)
        eb_rule(aws_strait, bus, proxy.url, aws_bus,
                retry={"maxAttempts": 1000, "initialBackoffMs": 100, "maxBackoffMs": 500})
        errors_before = metric(metrics_text(aws_strait),
                               "strait_aws_eventbridge_put_events_errors_total")
        moto.stop()
        source = f"/strait/{unique('src')}"
        events = [ce(source, data={"i": i}) for i in range(7)]
        post_batch(aws_strait, bus, events)
        deadline = time.monotonic() + WAIT_S
        while metric(metrics_text(aws_strait),
                     "strait_aws_eventbridge_put_events_errors_total") < errors_before + 3:
            assert time.monotonic() < deadline, "no failed PutEvents attempts while moto is down"
            time.sleep(0.2)
        assert proxy.calls_for_bus(aws_bus), "PutEvents was not attempted while moto was down"
        proxy.hold = True
        moto.start()  # same port, empty state
        queue = moto.bus_to_queue(aws_bus, queue_name, pattern)
        proxy.hold = False
        got = moto.drain(queue, 7, WAIT_S)
        assert sorted(m["detail"]["i"] for m in got) == list(range(7)), aws_strait.logs()
    finally:
        proxy.stop()
        moto.stop()


def test_sqs_target_standard_and_fifo(aws_strait: StraitServer, moto: Moto) -> None:
    sqs = moto.client("sqs")
    plain = sqs.create_queue(QueueName=unique("plain"))["QueueUrl"]
    fifo = sqs.create_queue(QueueName=unique("f") + ".fifo",
                            Attributes={"FifoQueue": "true"})["QueueUrl"]
    bus = new_bus(aws_strait, "aws-sqs")
    aws_strait.put_rule(bus, unique("rule"), {"pattern": {}, "targets": [
        {"id": "plain", "type": "aws_sqs", "queueUrl": plain, "credential": "moto",
         "region": REGION, "endpoint": moto.url},
        {"id": "fifo", "type": "aws_sqs", "queueUrl": fifo, "credential": "moto",
         "region": REGION, "endpoint": moto.url, "body": "data",
         "messageGroupAttribute": "tenant"}]})
    tp, _ = traceparent()
    events = [ce("/strait/sqs", tenant=f"t{i % 2}", traceparent=tp, data={"i": i})
              for i in range(4)]
    post_batch(aws_strait, bus, events)
    got = moto.drain(plain, 4, WAIT_S)
    assert sorted(m["id"] for m in got) == sorted(e["id"] for e in events)
    assert all(m["specversion"] == "1.0" and m["source"] == "/strait/sqs" for m in got)
    # FIFO: body is the data; group from `tenant`, dedup id = event id
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT_S
    while len(seen) < 4 and time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   AttributeNames=["All"], MessageAttributeNames=["All"])
        for m in resp.get("Messages", []):
            seen.append(m)
            sqs.delete_message(QueueUrl=fifo, ReceiptHandle=m["ReceiptHandle"])
    assert len(seen) == 4, seen
    for m in seen:
        i = json.loads(m["Body"])["i"]
        e = events[i]
        assert m["Attributes"]["MessageGroupId"] == e["tenant"]
        assert m["Attributes"]["MessageDeduplicationId"] == e["id"]
        assert m["MessageAttributes"]["ce-id"]["StringValue"] == e["id"]
        assert m["MessageAttributes"]["traceparent"]["StringValue"].split("-")[1] == tp.split("-")[1]


# ---------------------------------------------------------------------------
# AWS → Strait: SQS source
# ---------------------------------------------------------------------------


def queue_counts(moto: Moto, url: str) -> tuple[int, int]:
    a = moto.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                      "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def test_sqs_source_survives_sigkill_between_commit_and_delete(
    moto: Moto, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_bus = unique("eb-src")
    moto.client("events").create_event_bus(Name=aws_bus)
    queue_name = unique("src-q")
    queue_url = f"{moto.url}/{'123456789012'}/{queue_name}"
    source_name = f"aws.{unique('app')}"
    config = aws_config({"sources": [{
        "name": "moto-src", "queue_url": queue_url, "bus": "awsin", "credential": "moto",
        "region": REGION, "endpoint": moto.url, "wait_time_secs": 1,
        "visibility_timeout_secs": 3, "provision": True, "event_bus": aws_bus,
        "event_pattern": {"source": [source_name]},
    }]})
    config["buses"] = ["default", "awsin"]
    # commit, then wait a minute before deleting: the window the test kills in
    monkeypatch.setenv("STRAIT_TEST_AWS_SOURCE_DELETE_DELAY_MS", "60000")
    strait = start_strait(tmp_path / "strait", config)
    monkeypatch.delenv("STRAIT_TEST_AWS_SOURCE_DELETE_DELAY_MS")
    try:
        url, path = receiver.endpoint(unique("aws-src"))
        rule = http_rule(strait, "awsin", url)
        events = moto.client("events")
        # provisioning is asynchronous: wait for the rule Strait creates AND its
        # target (PutRule comes before PutTargets: an event put in between
        # matches a rule with no target and is dropped by EventBridge)
        deadline = time.monotonic() + WAIT_S
        while not provisioned(events, aws_bus):
            assert time.monotonic() < deadline, f"rule not provisioned\n{strait.logs()}"
            time.sleep(0.2)
        entries = [{"Source": source_name, "DetailType": "thing.happened",
                    "Detail": json.dumps({"n": i}), "EventBusName": aws_bus,
                    "Resources": [f"arn:aws:thing:{i}"]} for i in range(5)]
        resp = events.put_events(Entries=entries)
        assert resp["FailedEntryCount"] == 0, resp
        ids = [e["EventId"] for e in resp["Entries"]]
        got = receiver.wait_for(path, ids, WAIT_S, diagnostics=strait.logs)
        for i, eid in enumerate(ids):
            attrs = got[eid].event.get_attributes()
            assert attrs["source"] == source_name
            assert attrs["type"] == "thing.happened"
            # (moto's SQS delivery leaves out the envelope's `account`; the mapping of
            # `account` to `awsaccount` is covered by the Rust unit tests)
            assert attrs["awsregion"] == REGION
            assert attrs["awsresources"] == f"arn:aws:thing:{i}"
            assert got[eid].event.get_data() == {"n": i}
        # committed and delivered, not yet deleted
        visible, in_flight = queue_counts(moto, queue_url)
        assert visible + in_flight == 5, (visible, in_flight)
        # the dispatcher's progress must be replicated before the kill, or the
        # restarted node delivers the events again (at least once, by design)
        wait_checkpointed(strait, "awsin", rule)
        assert strait.proc is not None
        strait.proc.send_signal(signal.SIGKILL)
        strait.proc.wait(timeout=10)

        strait.start()  # same data dir, no delete delay
        deadline = time.monotonic() + WAIT_S
        while queue_counts(moto, queue_url) != (0, 0):
            assert time.monotonic() < deadline, (
                f"messages not deleted after restart: {queue_counts(moto, queue_url)}\n"
                f"{strait.logs()}")
            time.sleep(0.3)
        text = metrics_text(strait)
        assert metric(text, "strait_events_duplicate_total") >= 5, text
        time.sleep(1.0)
        per_id: dict[str, int] = {}
        for d in receiver.deliveries(path):
            assert d.event is not None
            per_id[d.event.get_id()] = per_id.get(d.event.get_id(), 0) + 1
        assert sorted(per_id) == sorted(ids)
        assert all(n == 1 for n in per_id.values()), per_id
    finally:
        strait.stop()


# ---------------------------------------------------------------------------
# AWS SDK → Strait: PutEvents ingress
# ---------------------------------------------------------------------------


def strait_events(strait: StraitServer, key: str = INGRESS_KEY,
                  secret: str = INGRESS_KEY_SECRET) -> Any:
    return boto3.client("events", endpoint_url=strait.base_url, region_name=REGION,
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        config=Config(retries={"total_max_attempts": 1}))


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def test_boto3_put_events_against_strait(aws_strait: StraitServer, receiver: Receiver) -> None:
    bus = new_bus(aws_strait, "aws-in")
    url, path = receiver.endpoint(unique("aws-in"))
    http_rule(aws_strait, bus, url)
    client = strait_events(aws_strait)
    tp, trace = traceparent()
    xray = f"Root=1-{trace[:8]}-{trace[8:]};Parent={tp.split('-')[2]};Sampled=1"
    resp = client.put_events(Entries=[
        {"Source": "my.app", "DetailType": "order.placed", "Detail": json.dumps({"a": 1}),
         "EventBusName": bus, "Resources": ["arn:aws:x:1", "arn:aws:x:2"],
         "Time": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
         "TraceHeader": xray},
        {"Source": "my.app", "DetailType": "order.placed", "Detail": "[1, 2]",
         "EventBusName": bus},
        {"Source": "my.app", "DetailType": "order.placed", "Detail": "{}",
         "EventBusName": "no-such-bus"},
        {"Source": "my.app", "DetailType": "order.paid", "Detail": json.dumps({"b": 2}),
         "EventBusName": f"arn:aws:events:{REGION}:111122223333:event-bus/{bus}"},
    ])
    assert resp["FailedEntryCount"] == 2, resp
    e = resp["Entries"]
    assert "EventId" in e[0] and "EventId" in e[3]
    assert e[1]["ErrorCode"] == "MalformedDetail"
    assert e[2]["ErrorCode"] == "ResourceNotFoundException"
    got = receiver.wait_for(path, [e[0]["EventId"], e[3]["EventId"]], WAIT_S)
    first = got[e[0]["EventId"]].event
    attrs = first.get_attributes()
    assert attrs["source"] == "my.app"
    assert attrs["type"] == "order.placed"
    assert attrs["awsresources"] == "arn:aws:x:1,arn:aws:x:2"
    assert attrs["awsaccount"] == "111122223333"
    assert attrs["awsregion"] == REGION
    assert str(attrs["time"]).startswith("2026-01-02")
    assert attrs["traceparent"].split("-")[1] == trace
    assert first.get_data() == {"a": 1}
    assert got[e[3]["EventId"]].event.get_data() == {"b": 2}


def test_boto3_put_events_errors_have_aws_codes(aws_strait: StraitServer) -> None:
    entry = {"Source": "my.app", "DetailType": "t", "Detail": "{}"}
    with pytest.raises(ClientError) as exc:
        strait_events(aws_strait, secret="wrong-secret").put_events(Entries=[entry])
    assert error_code(exc) == "InvalidSignatureException", exc.value.response
    with pytest.raises(ClientError) as exc:
        strait_events(aws_strait, key="AKIDUNKNOWN").put_events(Entries=[entry])
    assert error_code(exc) == "UnrecognizedClientException", exc.value.response
    stale = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - \
        datetime.timedelta(minutes=20)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=stale):
        with pytest.raises(ClientError) as exc:
            strait_events(aws_strait).put_events(Entries=[entry])
    assert error_code(exc) == "InvalidSignatureException", exc.value.response
    assert "Signature expired" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:
        strait_events(aws_strait).put_events(Entries=[entry] * 11)
    assert error_code(exc) == "ValidationException", exc.value.response
    big = {"Source": "my.app", "DetailType": "t",
           "Detail": json.dumps({"x": "y" * 100_000})}
    with pytest.raises(ClientError) as exc:
        strait_events(aws_strait).put_events(Entries=[big] * 3)
    assert error_code(exc) == "ValidationException", exc.value.response
    # the happy path still works with the same client settings
    ok = strait_events(aws_strait).put_events(Entries=[entry])
    assert ok["FailedEntryCount"] == 0


# ---------------------------------------------------------------------------
# Alibaba SDK → Strait → AWS EventBridge (moto) → SQS
# ---------------------------------------------------------------------------


def test_alibaba_sdk_to_strait_to_aws(aws_strait: StraitServer, moto: Moto) -> None:
    bus = new_bus(aws_strait, "ali-to-aws")
    aws_bus = unique("eb-ali")
    queue = moto.bus_to_queue(aws_bus, unique("q"), {"source": [{"prefix": "acs."}]})
    eb_rule(aws_strait, bus, moto.url, aws_bus, resourcesAttribute="subject")
    client = sdk_client(aws_strait)
    events = [sdk_event(bus, f"acs.oss.{unique('s')}") for _ in range(3)]
    resp = client.put_events(events)
    assert resp.failed_entry_count == 0, resp.to_map()
    got = moto.drain(queue, 3, WAIT_S)
    assert len(got) == 3, aws_strait.logs()
    by_source = {m["source"]: m for m in got}
    for e in events:
        m = by_source[e.source]
        assert m["detail-type"] == "oss:ObjectCreated:PostObject"
        assert m["detail"] == {"bucket": "b", "size": 42, "name": "naïve ✓"}
        assert m["resources"] == ["acs:oss:cn-hangzhou:1234567890:bucket/object.txt"]
        assert m["time"] == "2025-03-04T05:06:07Z"
