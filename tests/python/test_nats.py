"""NATS interop with the NATS project's own Python client (nats-py) on the other side.

A real ``nats-server -js`` (Debian package; the test fails when it is missing) is
started for the module. nats-py publishes CloudEvents in binary mode (``ce-`` headers,
the NATS protocol binding), in structured mode (built by the official CloudEvents
SDK) and a plain payload to a JetStream stream; a ``nats`` source reads the stream
into a bus, a rule delivers to a ``nats`` JetStream target, and nats-py reads the
output stream back: ids, attributes and data intact, the plain payload wrapped with
the id ``<stream>:<sequence>`` and ``Nats-Msg-Id`` set to the event id.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import nats
import pytest
from cloudevents.core.bindings.http import to_structured
from cloudevents.core.v1.event import CloudEvent

from strait_support import JSON_FORMAT, StraitServer, describe, tail, unique


def loopback_port() -> int:
    """A free loopback port below the ephemeral range (which outgoing connections use)."""
    for _ in range(200):
        port = random.randint(10_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").is_file() else None
    )
    if binary is None:
        pytest.fail("nats-server is not installed: run scripts/setup-test-deps", pytrace=False)
    workdir = tmp_path_factory.mktemp("nats")
    port = loopback_port()
    log = workdir / "nats.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(workdir / "js")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail(f"nats-server exited with {proc.returncode}:\n{tail(log)}", pytrace=False)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nats-server did not listen within 20 s:\n{tail(log)}", pytrace=False)
            time.sleep(0.1)
    yield f"nats://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


async def _round_trip(url: str, stream_in: str, stream_out: str, n_expected: int,
                      publish) -> list:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        seqs = await publish(js)
        sub = await js.pull_subscribe(f"{stream_out.lower()}.>", stream=stream_out)
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < n_expected and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(n_expected - len(got), timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()
                got.append(m)
        return seqs, got
    finally:
        await nc.close()


def test_nats_py_round_trip(strait: StraitServer, default_bus: str, nats_url: str) -> None:
    tag = unique("py").replace("-", "")[:14].upper()
    stream_in, stream_out = f"IN{tag}", f"OUT{tag}"

    async def setup() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name=stream_in, subjects=[f"{stream_in.lower()}.>"])
        await js.add_stream(name=stream_out, subjects=[f"{stream_out.lower()}.>"])
        await nc.close()

    asyncio.run(setup())
    event_type = f"py.{tag.lower()}"
    strait.put_rule(
        default_bus,
        unique("nats-py"),
        {
            "pattern": {"type": [{"prefix": event_type}]},
            "targets": [{"id": "out", "type": "nats", "url": nats_url,
                         "subject": f"{stream_out.lower()}.events", "jetstream": True}],
        },
    )
    resp = strait.request(
        "PUT",
        f"/v1/sources/{unique('nats-src')}",
        json={"type": "nats", "bus": default_bus, "url": nats_url,
              "subject": f"{stream_in.lower()}.>", "stream": stream_in,
              "eventType": f"{event_type}.wrapped"},
    )
    assert resp.status_code == 200, describe(resp)

    structured = CloudEvent(
        {"id": "s-1", "source": "/py/structured", "type": f"{event_type}.structured",
         "specversion": "1.0", "datacontenttype": "application/json", "subject": "a b"},
        {"n": 2, "text": "ünïcode"},
    )
    msg = to_structured(structured, JSON_FORMAT)

    async def publish(js) -> list[int]:
        subject = f"{stream_in.lower()}.x"
        acks = [
            await js.publish(subject, b'{"n": 1}', headers={
                "ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "/py/binary",
                "ce-type": f"{event_type}.binary", "ce-myext": "v 1",
                "content-type": "application/json"}),
            await js.publish(subject, msg.body, headers=dict(msg.headers)),
            await js.publish(subject, b"plain bytes \x00\xff",
                             headers={"content-type": "application/octet-stream"}),
        ]
        return [a.seq for a in acks]

    seqs, got = asyncio.run(_round_trip(nats_url, stream_in, stream_out, 3, publish))
    assert len(got) == 3, f"got {len(got)} messages back:\n{strait.logs()}"
    by_id = {m.headers["ce-id"]: m for m in got}
    assert set(by_id) == {"b-1", "s-1", f"{stream_in}:{seqs[2]}"}, by_id.keys()

    b = by_id["b-1"]
    assert b.headers["ce-source"] == "/py/binary"
    assert b.headers["ce-myext"] == "v 1"
    assert b.headers["Nats-Msg-Id"] == "b-1"
    assert json.loads(b.data) == {"n": 1}

    s = by_id["s-1"]
    assert s.headers["ce-subject"] == "a b"
    assert s.headers["ce-type"] == f"{event_type}.structured"
    assert json.loads(s.data) == {"n": 2, "text": "ünïcode"}

    w = by_id[f"{stream_in}:{seqs[2]}"]
    assert w.headers["ce-type"] == f"{event_type}.wrapped"
    assert w.headers["ce-source"] == f"{nats_url}/{stream_in.lower()}.x"
    assert w.data == b"plain bytes \x00\xff"
