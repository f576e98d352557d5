"""MQTT interop with the Eclipse Paho Python client (paho-mqtt 2.x) on the other side.

A real ``mosquitto`` (Debian package; the test fails when it is missing) is started
for the module with its own configuration on a free port. Paho publishes CloudEvents
in MQTT 5 binary mode (user properties and Content Type, the MQTT protocol binding),
in structured mode (built by the official CloudEvents SDK) and plain payloads; an
``mqtt`` source reads them into a bus, a rule delivers to an ``mqtt`` target, and Paho
reads them back: ids, attributes and data intact, the plain payload wrapped. The same
over MQTT 3.1.1 (structured mode only). A poison message is dead-lettered with its
reason while the source moves on, and a broker restart mid-stream is survived.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
import pytest
from cloudevents.core.bindings.http import to_structured
from cloudevents.core.v1.event import CloudEvent
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from strait_support import JSON_FORMAT, StraitServer, describe, free_port, tail, unique


class Broker:
    """``mosquitto -c conf`` on a free loopback port (restartable on the same port)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None
        )
        if binary is None:
            pytest.fail("mosquitto is not installed: run scripts/setup-test-deps", pytrace=False)
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        (workdir / "db").mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir / 'db'}/\n"
            "max_queued_messages 0\n"
        )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.proc.returncode}:\n{tail(self.log)}",
                            pytrace=False)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"mosquitto did not listen within 20 s:\n{tail(self.log)}",
                                pytrace=False)
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


class Client:
    """A Paho client (MQTT 5 or 3.1.1) that collects what its subscriptions bring."""

    def __init__(self, port: int, protocol: int, subscribe: list[str] | None = None) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.subscribed: queue.Queue[bool] = queue.Queue()
        self.protocol = protocol
        self.filters = subscribe or []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("paho"),
                             protocol=protocol)
        self.c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *_a: self.subscribed.put(True)
        self.c.reconnect_delay_set(min_delay=1, max_delay=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if self.filters:
            self.subscribed.get(timeout=20)

    def _on_connect(self, client: paho.Client, *_args: object) -> None:
        for f in self.filters:
            client.subscribe(f, qos=1)

    def publish(self, topic: str, payload: bytes, user: list[tuple[str, str]] | None = None,
                content_type: str | None = None) -> None:
        props = None
        if self.protocol == paho.MQTTv5 and (user or content_type):
            props = Properties(PacketTypes.PUBLISH)
            if user:
                props.UserProperty = user
            if content_type:
                props.ContentType = content_type
        info = self.c.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(timeout=20)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def take(self, n: int, timeout: float = 30) -> list[paho.MQTTMessage]:
        out: list[paho.MQTTMessage] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(out)} of {n} messages")
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def user_properties(msg: paho.MQTTMessage) -> dict[str, str]:
    props = getattr(msg, "properties", None)
    return dict(getattr(props, "UserProperty", []) or [])


def content_type(msg: paho.MQTTMessage) -> str | None:
    return getattr(getattr(msg, "properties", None), "ContentType", None)


def wait_running(strait: StraitServer, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = strait.request("GET", f"/v1/sources/{name}").json().get("status", {})
        if st.get("running") and st.get("lastError") is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"source {name} not running: {st}\n{strait.logs()}")


def test_paho_round_trip_v5_binary_structured_plain_and_poison(
        strait: StraitServer, default_bus: str, broker: Broker) -> None:
    tag = unique("m5").replace("-", "")
    event_type = f"py.{tag}"
    dlq = f"dlq-{tag}"
    strait.ensure_bus(dlq)
    strait.put_rule(default_bus, unique("mqtt-py"), {
        "pattern": {"type": [{"prefix": event_type}]},
        "targets": [{"id": "out", "type": "mqtt", "url": broker.url, "topic": f"out/{tag}",
                     "qos": 1}],
    })
    source = unique("mqtt-src")
    resp = strait.request("PUT", f"/v1/sources/{source}", json={
        "type": "mqtt", "bus": default_bus, "url": broker.url, "topic": f"in/{tag}/#",
        "qos": 1, "eventType": f"{event_type}.wrapped", "deadLetterBus": dlq})
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["protocol"] == "v5", resp.json()
    wait_running(strait, source)

    reader = Client(broker.port, paho.MQTTv5, [f"out/{tag}"])
    writer = Client(broker.port, paho.MQTTv5)
    try:
        writer.publish(f"in/{tag}/a", b'{"n": 1}', user=[
            ("specversion", "1.0"), ("id", "b-1"), ("source", "/py/mqtt-binary"),
            ("type", f"{event_type}.binary"), ("myext", "v 1")],
            content_type="application/json")
        structured = CloudEvent(
            {"id": "s-1", "source": "/py/mqtt-structured", "type": f"{event_type}.structured",
             "specversion": "1.0", "datacontenttype": "application/json", "subject": "a b"},
            {"n": 2, "text": "ünïcode"},
        )
        msg = to_structured(structured, JSON_FORMAT)
        writer.publish(f"in/{tag}/b", msg.body, content_type=msg.headers["content-type"])
        # Poison: binary mode without `source` nor `type`.
        writer.publish(f"in/{tag}/bad", b"poison", user=[("specversion", "1.0"), ("id", "x")])
        writer.publish(f"in/{tag}/plain", b"plain bytes \x00\xff",
                       content_type="application/octet-stream")

        got = reader.take(3)
        by_id = {user_properties(m)["id"]: m for m in got}
        assert {"b-1", "s-1"} <= set(by_id), by_id.keys()

        b = by_id["b-1"]
        assert user_properties(b)["source"] == "/py/mqtt-binary"
        assert user_properties(b)["myext"] == "v 1"
        assert content_type(b) == "application/json"
        assert json.loads(b.payload) == {"n": 1}

        s = by_id["s-1"]
        assert user_properties(s)["subject"] == "a b"
        assert user_properties(s)["type"] == f"{event_type}.structured"
        assert json.loads(s.payload) == {"n": 2, "text": "ünïcode"}

        (w,) = [m for i, m in by_id.items() if i not in ("b-1", "s-1")]
        wp = user_properties(w)
        assert len(wp["id"]) == 32, wp
        assert wp["type"] == f"{event_type}.wrapped"
        assert wp["source"] == f"{broker.url}/in/{tag}/plain"
        assert w.payload == b"plain bytes \x00\xff"

        # The poison message is a dead letter with its reason; the source moved on.
        dead = strait.request("GET", f"/v1/buses/{dlq}/dead-letters").json()["deadLetters"]
        assert len(dead) == 1, dead
        assert dead[0]["source"] == f"{broker.url}/in/{tag}/bad"
        assert "binary mode" in dead[0]["reason"], dead
        st = strait.request("GET", f"/v1/sources/{source}").json()["status"]
        assert st["committed"] == 3 and st["rejected"] == 1, st

        # Broker restart mid-stream: the source and the target reconnect.
        broker.stop()
        broker.start()
        time.sleep(2)  # the Paho clients reconnect by themselves (1 s delay)
        for i in range(5):
            writer.publish(f"in/{tag}/after", f"after {i}".encode(), content_type="text/plain")
        after = {m.payload.decode() for m in reader.take(5, timeout=60)}
        assert after == {f"after {i}" for i in range(5)}, after
    finally:
        reader.close()
        writer.close()


def test_paho_round_trip_v311_structured(strait: StraitServer, default_bus: str,
                                          broker: Broker) -> None:
    tag = unique("m3").replace("-", "")
    event_type = f"py3.{tag}"
    strait.put_rule(default_bus, unique("mqtt-py3"), {
        "pattern": {"type": [{"prefix": event_type}]},
        "targets": [{"id": "out", "type": "mqtt", "url": broker.url, "topic": f"out3/{tag}",
                     "qos": 1, "protocol": "v3.1.1"}],
    })
    source = unique("mqtt3-src")
    resp = strait.request("PUT", f"/v1/sources/{source}", json={
        "type": "mqtt", "bus": default_bus, "url": broker.url, "topic": f"in3/{tag}/+",
        "protocol": "v3.1.1", "eventType": f"{event_type}.wrapped"})
    assert resp.status_code == 200, describe(resp)
    wait_running(strait, source)
    reader = Client(broker.port, paho.MQTTv311, [f"out3/{tag}"])
    writer = Client(broker.port, paho.MQTTv311)
    try:
        event = CloudEvent(
            {"id": "s3-1", "source": "/py/v311", "type": f"{event_type}.structured",
             "specversion": "1.0", "datacontenttype": "application/json"},
            {"v": 3},
        )
        writer.publish(f"in3/{tag}/a", to_structured(event, JSON_FORMAT).body)
        writer.publish(f"in3/{tag}/b", b'{"reading": 21.5}')
        got = [json.loads(m.payload) for m in reader.take(2)]
        by_id = {e["id"]: e for e in got}
        assert by_id["s3-1"]["data"] == {"v": 3}
        assert by_id["s3-1"]["source"] == "/py/v311"
        (w,) = [e for i, e in by_id.items() if i != "s3-1"]
        assert w["type"] == f"{event_type}.wrapped"
        assert w["source"] == f"{broker.url}/in3/{tag}/b"
        assert w["data"] == {"reading": 21.5}
    finally:
        reader.close()
        writer.close()
