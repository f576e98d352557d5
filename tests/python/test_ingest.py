"""Ingress: events encoded by the official CloudEvents SDK in binary, structured and
batch mode are accepted by ``POST /v1/buses/default/events``; a resend is a duplicate.
See docs/api.md, "Ingress"."""

from __future__ import annotations

import json

import pytest

from strait_support import (
    BATCH_CT,
    StraitServer,
    assert_ingest,
    describe,
    event_json,
    ingest_result,
    make_event,
)

KINDS = ["json", "text", "bytes"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_single_event_accepted_then_duplicate(
    strait: StraitServer, default_bus: str, source: str, mode: str, kind: str
) -> None:
    event = make_event(source, kind=kind, typed_extensions=(mode != "binary"))
    eid = event.get_id()

    assert_ingest(strait.send(event, mode), [(eid, "accepted")])
    # the very same event again, in the same mode
    assert_ingest(strait.send(event, mode), [(eid, "duplicate")])


def test_batch_accepted_then_duplicate(
    strait: StraitServer, default_bus: str, source: str
) -> None:
    events = [make_event(source, kind=k, typed_extensions=True) for k in KINDS]
    ids = [e.get_id() for e in events]

    assert_ingest(strait.send_batch(events), [(i, "accepted") for i in ids])
    assert_ingest(strait.send_batch(events), [(i, "duplicate") for i in ids])

    # a batch mixing a new event and an old one: 200, one of each, in order
    fresh = make_event(source, kind="json", typed_extensions=True)
    assert_ingest(
        strait.send_batch([fresh, events[1]]),
        [(fresh.get_id(), "accepted"), (ids[1], "duplicate")],
    )


def test_duplicate_detected_across_content_modes(
    strait: StraitServer, default_bus: str, source: str
) -> None:
    """Dedup is on (bus, source, id), whatever the content mode."""
    event = make_event(source, kind="json", typed_extensions=False)
    eid = event.get_id()
    assert_ingest(strait.send(event, "binary"), [(eid, "accepted")])
    assert_ingest(strait.send(event, "structured"), [(eid, "duplicate")])
    assert_ingest(strait.send_batch([event]), [(eid, "duplicate")])


def test_same_id_other_source_is_not_a_duplicate(
    strait: StraitServer, default_bus: str, source: str
) -> None:
    first = make_event(source, kind="json", typed_extensions=True)
    eid = first.get_id()
    other = make_event(source + ":other", kind="json", typed_extensions=True, event_id=eid)
    assert_ingest(strait.send(first, "structured"), [(eid, "accepted")])
    assert_ingest(strait.send(other, "structured"), [(eid, "accepted")])


def test_batch_with_an_invalid_entry_is_207(
    strait: StraitServer, default_bus: str, source: str
) -> None:
    good = make_event(source, kind="json", typed_extensions=True)
    bad = event_json(make_event(source, kind="json", typed_extensions=True))
    del bad["id"]
    body = json.dumps([event_json(good), bad]).encode()

    resp = strait.post_events({"content-type": BATCH_CT}, body)
    result = assert_ingest(resp, [(good.get_id(), "accepted"), (None, "error")], http_status=207)
    error = result["results"][1].get("error") or {}
    assert error.get("code") == "MissingAttribute", f"entry error {error}; body {result}"


def test_binary_event_without_id_is_400(
    strait: StraitServer, default_bus: str, source: str
) -> None:
    resp = strait.post_events(
        {
            "ce-specversion": "1.0",
            "ce-source": source,
            "ce-type": "com.example.strait.noid",
            "content-type": "application/json",
        },
        b"{}",
    )
    body = ingest_result(resp, 400)
    assert body.get("error", {}).get("code") == "MissingAttribute", f"body {body}"


def test_unknown_bus_is_404(strait: StraitServer, source: str) -> None:
    event = make_event(source, kind="json", typed_extensions=True)
    resp = strait.send(event, "structured", bus="no-such-bus-pytest")
    assert resp.status_code == 404, describe(resp)
    assert resp.json().get("error", {}).get("code") == "BusNotFound", describe(resp)
