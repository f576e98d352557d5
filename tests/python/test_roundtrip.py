"""Round trip: SDK-encoded events go in, a rule delivers them to an HTTP receiver, the
SDK parses them back and every attribute and the data must be intact.

Expected values follow the CloudEvents 1.0 spec, its HTTP protocol binding and JSON
event format:

* binary mode carries every attribute as a header string, so extensions sent in binary
  mode are strings ("42", "true") from then on; an int/bool extension sent as a JSON
  number/boolean (structured, batch) is delivered as that JSON type in structured mode
  and as its canonical string ("42", "true") in binary mode;
* header values are percent-encoded (space, double quote, percent, non-ASCII);
* JSON data is a JSON value under ``data``; binary data is ``data_base64``;
* ``traceparent``: kept when the producer sent one, else generated; every delivery
  carries it as an attribute (``ce-traceparent`` in binary mode) and as the HTTP
  ``traceparent`` header (docs/api.md).
"""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from dateutil.parser import isoparse

from strait_support import (
    DATASCHEMA,
    FIXED_TIME,
    JSON_DATA,
    RAW_DATA,
    STRING_EXT,
    STRUCTURED_CT,
    SUBJECT,
    TEXT_DATA,
    Delivery,
    Receiver,
    StraitServer,
    assert_ingest,
    make_event,
    new_traceparent,
    parse_traceparent,
)

# printable ASCII except space, '"' and '%', or a %XX escape (HTTP binding 3.1.3.2)
CE_HEADER_VALUE_RE = re.compile(r"^(?:[\x21\x23\x24\x26-\x7e]|%[0-9A-Fa-f]{2})*$")

EXPECTED_ATTRS = {
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "time",
    "dataschema",
    "datacontenttype",
    "comexampleext",
    "myint",
    "mybool",
    "traceparent",
}

MakeRule = Callable[..., "tuple[str, str]"]


def send_all(strait: StraitServer, events: list[Any], ingest: str) -> None:
    """Send in ``binary``/``structured`` mode one by one, or as one ``batch``."""
    if ingest == "batch":
        assert_ingest(strait.send_batch(events), [(e.get_id(), "accepted") for e in events])
    else:
        for e in events:
            assert_ingest(strait.send(e, ingest), [(e.get_id(), "accepted")])


def check_traceparent(d: Delivery, where: str, expected_trace: str | None) -> str:
    attrs = d.event.get_attributes() if d.event else {}
    assert "traceparent" in attrs, (
        f"{where}: delivered event has no traceparent attribute "
        f"({'ce-traceparent header' if d.ce_headers() else 'structured attribute'})\n"
        f"{d.summary()}"
    )
    attr_trace, _, _ = parse_traceparent(attrs["traceparent"])
    header = d.headers.get("traceparent")
    assert header is not None, f"{where}: no HTTP `traceparent` header\n{d.summary()}"
    header_trace, _, _ = parse_traceparent(header)
    assert header_trace == attr_trace, (
        f"{where}: HTTP traceparent {header!r} and attribute {attrs['traceparent']!r} "
        "have different trace ids"
    )
    if expected_trace is not None:
        assert attr_trace == expected_trace, (
            f"{where}: producer trace id {expected_trace} not kept: "
            f"attribute {attrs['traceparent']!r}, header {header!r}"
        )
    return attr_trace


def check_delivery(
    d: Delivery,
    sent: Any,
    kind: str,
    ingest: str,
    delivery: str,
    expected_trace: str | None,
) -> None:
    where = f"[{kind} data, ingested {ingest}, delivered {delivery}]"
    assert d.method == "POST", f"{where}: delivered with {d.method}"
    sent_attrs = sent.get_attributes()

    # --- the wire format ---------------------------------------------------
    if delivery == "structured":
        assert d.media_type == STRUCTURED_CT, (
            f"{where}: structured delivery has Content-Type "
            f"{d.headers.get('content-type')!r}, expected {STRUCTURED_CT}\n{d.summary()}"
        )
        assert not d.ce_headers(), (
            f"{where}: structured delivery also carries ce- headers {d.ce_headers()}, "
            "so receivers (the SDK's from_http) take it for binary mode"
        )
        raw = json.loads(d.body)
        assert isinstance(raw, dict), f"{where}: body is not a JSON object: {d.body[:300]!r}"
        if kind == "json":
            assert raw.get("data") == JSON_DATA, (
                f"{where}: JSON data must be a JSON value under `data`, got "
                f"{ {k: raw.get(k) for k in ('data', 'data_base64')} }"
            )
        if kind == "bytes":
            assert "data" not in raw and "data_base64" in raw, (
                f"{where}: binary data must be carried as `data_base64`: {raw}"
            )
            assert base64.b64decode(raw["data_base64"]) == RAW_DATA
    else:
        ce = d.ce_headers()
        assert ce, f"{where}: binary delivery without ce- headers\n{d.summary()}"
        assert ce.get("ce-specversion") == "1.0", f"{where}: ce-specversion {ce}"
        assert "ce-datacontenttype" not in ce, (
            f"{where}: datacontenttype must travel as Content-Type, not ce-datacontenttype"
        )
        assert d.headers.get("content-type") == sent_attrs["datacontenttype"], (
            f"{where}: Content-Type {d.headers.get('content-type')!r} != datacontenttype "
            f"{sent_attrs['datacontenttype']!r}"
        )
        for name, value in ce.items():
            assert CE_HEADER_VALUE_RE.match(value), (
                f"{where}: header {name}: {value!r} is not percent-encoded as the HTTP "
                "binding requires (space, '\"', '%' and non-ASCII must be %XX)"
            )
        if kind == "json":
            assert json.loads(d.body) == JSON_DATA, f"{where}: body {d.body!r}"
        elif kind == "text":
            assert d.body == TEXT_DATA.encode("utf-8"), f"{where}: body {d.body!r}"
        else:
            assert d.body == RAW_DATA, f"{where}: body {d.body!r} != {RAW_DATA!r}"

    # --- the event, as parsed back by the SDK ------------------------------
    ev = d.event
    assert ev is not None, f"{where}: SDK could not parse: {d.parse_error}"
    attrs = ev.get_attributes()
    assert set(attrs) == EXPECTED_ATTRS, (
        f"{where}: attribute names differ: missing {sorted(EXPECTED_ATTRS - set(attrs))}, "
        f"unexpected {sorted(set(attrs) - EXPECTED_ATTRS)}; got {attrs}"
    )
    assert ev.get_id() == sent.get_id()
    assert ev.get_source() == sent.get_source()
    assert ev.get_type() == sent.get_type()
    assert ev.get_specversion() == "1.0"
    assert ev.get_subject() == SUBJECT, f"{where}: subject {ev.get_subject()!r}"
    assert ev.get_dataschema() == DATASCHEMA, f"{where}: dataschema {ev.get_dataschema()!r}"
    assert ev.get_datacontenttype() == sent_attrs["datacontenttype"], (
        f"{where}: datacontenttype {ev.get_datacontenttype()!r}"
    )
    assert ev.get_time() == FIXED_TIME, f"{where}: time {ev.get_time()!r} != {FIXED_TIME!r}"

    typed = ingest != "binary" and delivery == "structured"
    expected_ext: dict[str, Any] = {
        "comexampleext": STRING_EXT,
        "myint": 42 if typed else "42",
        "mybool": True if typed else "true",
    }
    for name, want in expected_ext.items():
        got = attrs.get(name)
        assert got == want and type(got) is type(want), (
            f"{where}: extension {name} is {got!r} ({type(got).__name__}), "
            f"expected {want!r} ({type(want).__name__})"
        )

    data = ev.get_data()
    if kind == "json":
        assert data == JSON_DATA, f"{where}: data {data!r}"
    elif kind == "text":
        if ingest == "binary" and delivery == "structured":
            # A binary-mode body has no declared JSON type; the JSON format lets an
            # implementation carry text/plain data either as a string or as data_base64.
            # Either way the UTF-8 must survive byte for byte.
            assert data in (TEXT_DATA, TEXT_DATA.encode("utf-8")), f"{where}: data {data!r}"
        else:
            assert data == TEXT_DATA and isinstance(data, str), f"{where}: data {data!r}"
    else:
        assert isinstance(data, bytes) and data == RAW_DATA, f"{where}: data {data!r}"

    check_traceparent(d, where, expected_trace)


@pytest.mark.parametrize("delivery", ["binary", "structured"])
@pytest.mark.parametrize("ingest", ["binary", "structured", "batch"])
def test_round_trip_preserves_every_attribute_and_data(
    strait: StraitServer,
    receiver: Receiver,
    make_rule: MakeRule,
    source: str,
    ingest: str,
    delivery: str,
) -> None:
    rule, path = make_rule(source, delivery)
    typed = ingest != "binary"
    producer_tp, producer_trace = new_traceparent()
    events = {
        # the producer's traceparent travels as ce-traceparent (binary) or attribute
        "json": make_event(source, kind="json", typed_extensions=typed, traceparent=producer_tp),
        "text": make_event(source, kind="text", typed_extensions=typed),
        "bytes": make_event(source, kind="bytes", typed_extensions=typed),
    }
    send_all(strait, list(events.values()), ingest)

    got = receiver.wait_for(
        path,
        [e.get_id() for e in events.values()],
        diagnostics=lambda: "rule: " + strait.rule_status("default", rule),
    )
    traces = {}
    for kind, sent in events.items():
        d = got[sent.get_id()]
        check_delivery(d, sent, kind, ingest, delivery, producer_trace if kind == "json" else None)
        traces[kind] = d.event.get_attributes()["traceparent"].split("-")[1]
    assert traces["text"] != traces["bytes"], (
        f"two events without a traceparent got the same generated trace id {traces['text']}"
    )


def test_structured_delivery_content_type(
    strait: StraitServer, receiver: Receiver, make_rule: MakeRule, source: str
) -> None:
    rule, path = make_rule(source, "structured")
    event = make_event(source, kind="json", typed_extensions=True)
    send_all(strait, [event], "structured")
    d = receiver.wait_for(
        path, [event.get_id()], diagnostics=lambda: strait.rule_status("default", rule)
    )[event.get_id()]
    ctype = d.headers.get("content-type", "")
    assert ctype.split(";")[0].strip() == STRUCTURED_CT, f"Content-Type {ctype!r}"
    assert json.loads(d.body)["id"] == event.get_id()


@pytest.mark.parametrize("delivery", ["binary", "structured"])
@pytest.mark.parametrize("ingest", ["binary", "structured"])
def test_traceparent_from_http_header_is_kept(
    strait: StraitServer,
    receiver: Receiver,
    make_rule: MakeRule,
    source: str,
    ingest: str,
    delivery: str,
) -> None:
    """A producer's HTTP `traceparent` header (no attribute) becomes the event's one."""
    rule, path = make_rule(source, delivery)
    event = make_event(source, kind="json", typed_extensions=(ingest != "binary"))
    tp, trace = new_traceparent()
    resp = strait.send(event, ingest, extra_headers={"traceparent": tp})
    assert_ingest(resp, [(event.get_id(), "accepted")])
    d = receiver.wait_for(
        path, [event.get_id()], diagnostics=lambda: strait.rule_status("default", rule)
    )[event.get_id()]
    check_traceparent(d, f"[HTTP traceparent header, ingested {ingest}, delivered {delivery}]",
                      trace)


@pytest.mark.parametrize("delivery", ["binary", "structured"])
def test_traceparent_generated_when_absent(
    strait: StraitServer, receiver: Receiver, make_rule: MakeRule, source: str, delivery: str
) -> None:
    rule, path = make_rule(source, delivery)
    events = [make_event(source, kind="json", typed_extensions=True) for _ in range(2)]
    for e in events:
        assert "traceparent" not in e.get_attributes()
    send_all(strait, events, "structured")
    got = receiver.wait_for(
        path, [e.get_id() for e in events], diagnostics=lambda: strait.rule_status("default", rule)
    )
    traces = [
        check_traceparent(got[e.get_id()], f"[no producer traceparent, delivered {delivery}]", None)
        for e in events
    ]
    assert traces[0] != traces[1], f"two events share the generated trace id {traces[0]}"


def test_time_added_when_absent(
    strait: StraitServer, receiver: Receiver, make_rule: MakeRule, source: str
) -> None:
    rule, path = make_rule(source, "structured")
    event = make_event(source, kind="json", typed_extensions=True, with_time=False)
    assert "time" not in event.get_attributes()
    before = datetime.now(timezone.utc)
    send_all(strait, [event], "structured")
    after = datetime.now(timezone.utc)
    d = receiver.wait_for(
        path, [event.get_id()], diagnostics=lambda: strait.rule_status("default", rule)
    )[event.get_id()]
    raw = json.loads(d.body)
    assert "time" in raw, f"no `time` added to an event sent without one: {raw}"
    stamped = isoparse(raw["time"])
    assert stamped.tzinfo is not None, f"time {raw['time']!r} has no offset (RFC 3339)"
    slack = timedelta(seconds=5)
    assert before - slack <= stamped <= after + slack, (
        f"time {raw['time']!r} is not the ingestion time ({before} .. {after})"
    )


def test_each_event_is_delivered_once_per_target(
    strait: StraitServer, receiver: Receiver, make_rule: MakeRule, source: str
) -> None:
    """A duplicate ingest is not delivered again."""
    rule, path = make_rule(source, "binary")
    event = make_event(source, kind="json", typed_extensions=True)
    marker = make_event(source, kind="text", typed_extensions=True)
    assert_ingest(strait.send(event, "structured"), [(event.get_id(), "accepted")])
    assert_ingest(strait.send(event, "structured"), [(event.get_id(), "duplicate")])
    assert_ingest(strait.send(marker, "structured"), [(marker.get_id(), "accepted")])
    receiver.wait_for(
        path,
        [event.get_id(), marker.get_id()],
        diagnostics=lambda: strait.rule_status("default", rule),
    )
    # the marker was sent after the duplicate; give a stray second copy a moment
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        copies = [d for d in receiver.deliveries(path) if d.event and d.event.get_id() == event.get_id()]
        assert len(copies) == 1, f"the event was delivered {len(copies)} times"
        time.sleep(0.1)
