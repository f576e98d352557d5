"""Kafka interop with confluent-kafka (librdkafka's Python client) on the other side.

The Kafka peer of the tests (``scripts/kafka-peer serve``; the test fails when it
cannot start) runs for the module. confluent-kafka publishes CloudEvents in binary
mode and in structured mode, both built by the official CloudEvents SDK's Kafka
binding (``cloudevents.core.bindings.kafka``), and plain records; a ``kafka`` source
reads the topic into a bus, a rule delivers to a ``kafka`` target, and
confluent-kafka reads the output topic back, parsed by the same SDK binding: ids,
attributes, keys and data intact, the plain record wrapped with the id
``<topic>:<partition>:<offset>``. A poison record (an invalid CloudEvent) is
dead-lettered to a bus with its reason, and the source moves on.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from strait_support import JSON_FORMAT, StraitServer, describe, free_port, tail, unique

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("kafka")
    port = free_port()
    err = workdir / "kafka-peer.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / "scripts/kafka-peer"), "serve", str(workdir), str(port), str(free_port())],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    brokers = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": brokers})
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"the Kafka peer exited with {proc.returncode} (run scripts/setup-test-deps):\n"
                f"{tail(err)}\n{tail(workdir / 'kafka.log')}",
                pytrace=False,
            )
        try:
            if admin.list_topics(timeout=1).brokers:
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the Kafka peer did not answer within 90 s:\n{tail(workdir / 'kafka.log')}",
                        pytrace=False)
        time.sleep(0.2)
    yield brokers
    proc.kill()
    proc.wait()


def create_topics(brokers: str, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    for topic, fut in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).items():
        fut.result(20)


def read_topic(brokers: str, topic: str, n: int, timeout: float = 60) -> list:
    """The first ``n`` records of partition 0 of ``topic`` (no consumer group)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": unique("reader"),
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append(m)
    finally:
        c.close()
    return got


def as_event(m) -> CloudEvent:
    """A record read back, parsed by the SDK's Kafka binding."""
    msg = ce_kafka.KafkaMessage(headers={k: v for k, v in (m.headers() or [])},
                                key=m.key(), value=m.value() or b"")
    return ce_kafka.from_kafka(msg, JSON_FORMAT)


def wait_source(strait: StraitServer, name: str, check, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = strait.request("GET", f"/v1/sources/{name}").json()["status"]
        if check(status):
            return status
        time.sleep(0.2)
    pytest.fail(f"{what}: {status}\n{strait.logs()}", pytrace=False)


def test_confluent_kafka_round_trip(strait: StraitServer, default_bus: str,
                                    kafka_brokers: str) -> None:
    tag = unique("py")
    topic_in, topic_out = f"in-{tag}", f"out-{tag}"
    create_topics(kafka_brokers, topic_in, topic_out)
    event_type = f"py.{tag}"
    dead_bus = unique("dl")
    strait.ensure_bus(dead_bus)
    strait.put_rule(
        default_bus,
        unique("kafka-py"),
        {
            "pattern": {"type": [{"prefix": event_type}]},
            "targets": [{"id": "out", "type": "kafka", "brokers": [kafka_brokers],
                         "topic": topic_out}],
        },
    )
    source = unique("kafka-src")
    resp = strait.request(
        "PUT",
        f"/v1/sources/{source}",
        json={"type": "kafka", "bus": default_bus, "brokers": [kafka_brokers],
              "topic": topic_in, "group": f"g-{tag}", "startFrom": "earliest",
              "eventType": f"{event_type}.wrapped", "deadLetterBus": dead_bus,
              "sessionTimeoutMs": 6000},
    )
    assert resp.status_code == 200, describe(resp)

    binary = CloudEvent(
        {"id": f"b-{tag}", "source": "/py/kafka/binary", "type": f"{event_type}.binary",
         "specversion": "1.0", "datacontenttype": "application/json", "myext": "v 1",
         "partitionkey": "pk-1"},
        {"n": 1},
    )
    structured = CloudEvent(
        {"id": f"s-{tag}", "source": "/py/kafka/structured", "type": f"{event_type}.structured",
         "specversion": "1.0", "datacontenttype": "application/json", "subject": "a b"},
        {"n": 2, "text": "ünïcode"},
    )
    p = Producer({"bootstrap.servers": kafka_brokers, "enable.idempotence": True})
    offsets: list[int] = []

    def sent(err, m) -> None:
        assert err is None, err
        offsets.append(m.offset())

    for msg in (ce_kafka.to_binary(binary, JSON_FORMAT),
                ce_kafka.to_structured(structured, JSON_FORMAT)):
        p.produce(topic_in, key=msg.key, value=msg.value, headers=list(msg.headers.items()),
                  on_delivery=sent)
        p.flush(20)
    p.produce(topic_in, key=b"sensor-7", value=b"plain bytes \x00\xff",
              headers=[("content-type", b"application/octet-stream")], on_delivery=sent)
    # Poison: says it is a binary-mode CloudEvent, has no source nor type.
    p.produce(topic_in, value=b"poison", headers=[("ce_specversion", b"1.0"), ("ce_id", b"x")],
              on_delivery=sent)
    # The source moves on past it.
    after = CloudEvent({"id": f"a-{tag}", "source": "/py/kafka/after", "type": f"{event_type}.after",
                        "specversion": "1.0"}, None)
    msg = ce_kafka.to_binary(after, JSON_FORMAT)
    p.produce(topic_in, value=msg.value, headers=list(msg.headers.items()), on_delivery=sent)
    assert p.flush(20) == 0
    assert len(offsets) == 5, offsets

    got = read_topic(kafka_brokers, topic_out, 4)
    assert len(got) == 4, f"got {len(got)} records back:\n{strait.logs()}"
    events = {e.get_id(): (e, m) for m in got for e in [as_event(m)]}
    plain_id = f"{topic_in}:0:{offsets[2]}"
    assert set(events) == {f"b-{tag}", f"s-{tag}", plain_id, f"a-{tag}"}, events.keys()

    b, bm = events[f"b-{tag}"]
    assert b.get_source() == "/py/kafka/binary"
    assert b.get_extension("myext") == "v 1"
    assert bm.key() == b"pk-1", "partitionkey is the record key"
    assert b.get_data() == {"n": 1}

    s, _ = events[f"s-{tag}"]
    assert s.get_subject() == "a b"
    assert s.get_type() == f"{event_type}.structured"
    assert s.get_data() == {"n": 2, "text": "ünïcode"}

    w, wm = events[plain_id]
    assert w.get_type() == f"{event_type}.wrapped"
    assert w.get_source() == f"kafka://{kafka_brokers}/{topic_in}"
    assert wm.key() == b"sensor-7"
    assert wm.value() == b"plain bytes \x00\xff"

    status = wait_source(strait, source,
                         lambda s: s["committed"] == 4 and s["rejected"] == 1,
                         "the source's counters")
    assert status["received"] == 5, status
    resp = strait.request("GET", f"/v1/buses/{dead_bus}/dead-letters")
    assert resp.status_code == 200, describe(resp)
    dead = resp.json()["deadLetters"]
    assert len(dead) == 1, dead
    poison_id = f"{topic_in}:0:{offsets[3]}"
    assert dead[0]["id"] == poison_id, dead
    assert dead[0]["source"] == f"kafka://{kafka_brokers}/{topic_in}", dead
    assert "binary mode" in dead[0]["reason"], dead
    ev = strait.request("GET", f"/v1/buses/{dead_bus}/events/{poison_id}").json()["event"]
    assert ev["type"] == "strait.source.rejected", ev
    assert ev["deadlettersource"] == source, ev
    assert ev["data_base64"] == "cG9pc29u", ev
