"""AWS archives and replays on the SigV4 endpoint, driven by unchanged boto3:
CreateArchive, DescribeArchive, ListArchives, UpdateArchive, DeleteArchive, StartReplay,
DescribeReplay, ListReplays and CancelReplay. Events put through PutEvents are archived;
a replay of the first batch's window to one of two rules (Destination.FilterArns)
reaches exactly that rule's HTTP target again, marked with `replayname`; AWS's error
codes through botocore's ClientError; response keys compared with moto's answers.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from botocore.exceptions import ClientError

from aws_support import REGION, Moto
from strait_support import Receiver, StraitServer, unique
from test_aws import aws_config, start_strait
from test_aws_control import ACCOUNT, client, code

WAIT_S = 30.0


@pytest.fixture(scope="module")
def strait(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StraitServer]:
    server = start_strait(Path(tmp_path_factory.mktemp("strait-aws-replay")), aws_config())
    yield server
    rc = server.crashed()
    logs = server.logs()
    server.stop()
    if rc is not None:
        pytest.fail(f"strait died (exit status {rc})\n{logs}", pytrace=False)


def bus_arn(bus: str) -> str:
    return f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{bus}"


def keys(d: dict[str, Any]) -> set[str]:
    return {k for k in d if k != "ResponseMetadata"}


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


def put(events: Any, bus: str, n: int, batch: str) -> list[str]:
    resp = events.put_events(Entries=[
        {"Source": "app", "DetailType": "t", "Detail": json.dumps({"batch": batch, "i": i}),
         "EventBusName": bus} for i in range(n)])
    assert resp["FailedEntryCount"] == 0, resp
    return [e["EventId"] for e in resp["Entries"]]


def replayed(receiver: Receiver, path: str, name: str) -> list[str]:
    return [d.event.get_id() for d in receiver.deliveries(path)
            if d.event is not None and d.event.get_attributes().get("replayname") == name]


def wait_until(what: str, check: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


def test_archive_put_events_and_replay_to_one_rule(strait: StraitServer, receiver: Receiver) -> None:
    bus = unique("arc")
    strait.ensure_bus(bus)
    paths = {}
    for rule in ("r1", "r2"):
        url, paths[rule] = receiver.endpoint(unique(rule))
        strait.put_rule(bus, rule, {"pattern": {"source": ["app"]},
                                    "targets": [{"id": "t", "type": "http", "endpoint": url}]})
    events = client(strait)
    name = unique("archive")

    created = events.create_archive(ArchiveName=name, EventSourceArn=bus_arn(bus),
                                    EventPattern=json.dumps({"source": ["app"]}),
                                    RetentionDays=1, Description="pytest")
    archive_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:archive/{name}"
    assert created["ArchiveArn"] == archive_arn
    assert created["State"] == "ENABLED"
    assert isinstance(created["CreationTime"], datetime.datetime)
    d = events.describe_archive(ArchiveName=name)
    assert d["ArchiveName"] == name and d["EventSourceArn"] == bus_arn(bus)
    assert json.loads(d["EventPattern"]) == {"source": ["app"]}
    assert (d["RetentionDays"], d["Description"], d["EventCount"]) == (1, "pytest", 0)

    # Two batches a whole second apart (botocore sends whole seconds).
    start = math.floor(time.time()) - 1
    first = put(events, bus, 3, "first")
    for rule in ("r1", "r2"):
        receiver.wait_for(paths[rule], first, WAIT_S, diagnostics=strait.logs)
    middle = math.ceil(time.time())
    while time.time() < middle + 0.2:
        time.sleep(0.05)
    second = put(events, bus, 2, "second")
    receiver.wait_for(paths["r1"], second, WAIT_S, diagnostics=strait.logs)
    end = math.ceil(time.time())
    while time.time() < end + 0.1:
        time.sleep(0.05)
    wait_until("5 archived events",
               lambda: events.describe_archive(ArchiveName=name)["EventCount"] == 5)
    assert events.describe_archive(ArchiveName=name)["SizeBytes"] > 0

    listed = events.list_archives(NamePrefix=name)["Archives"]
    assert [a["ArchiveName"] for a in listed] == [name]
    assert {"ArchiveName", "EventSourceArn", "State", "RetentionDays", "SizeBytes",
            "EventCount", "CreationTime"} <= set(listed[0])
    assert [a["ArchiveName"] for a in events.list_archives(EventSourceArn=bus_arn(bus))["Archives"]] == [name]
    assert events.list_archives(NamePrefix=name, State="DISABLED")["Archives"] == []

    updated = events.update_archive(ArchiveName=name, Description="changed", RetentionDays=3)
    assert updated["ArchiveArn"] == archive_arn
    d = events.describe_archive(ArchiveName=name)
    assert (d["Description"], d["RetentionDays"], d["EventCount"]) == ("changed", 3, 5)
    assert json.loads(d["EventPattern"]) == {"source": ["app"]}

    # Replay the first batch's window to r1 only.
    r1_arn = events.describe_rule(Name="r1", EventBusName=bus)["Arn"]
    replay = unique("replay")
    started = events.start_replay(ReplayName=replay, EventSourceArn=archive_arn,
                                  EventStartTime=at(start), EventEndTime=at(middle),
                                  Destination={"Arn": bus_arn(bus), "FilterArns": [r1_arn]})
    assert started["ReplayArn"] == f"arn:aws:events:{REGION}:{ACCOUNT}:replay/{replay}"
    assert started["State"] in ("STARTING", "RUNNING", "COMPLETED")
    assert isinstance(started["ReplayStartTime"], datetime.datetime)
    wait_until("the first batch replayed to r1",
               lambda: sorted(replayed(receiver, paths["r1"], replay)) == sorted(first))
    d = wait_until("COMPLETED", lambda: (lambda r: r if r["State"] == "COMPLETED" else None)(
        events.describe_replay(ReplayName=replay)))
    assert d["EventSourceArn"] == archive_arn
    assert d["Destination"] == {"Arn": bus_arn(bus), "FilterArns": [r1_arn]}
    assert d["EventStartTime"] == at(start) and d["EventEndTime"] == at(middle)
    assert {"ReplayName", "ReplayArn", "State", "EventSourceArn", "Destination", "EventStartTime",
            "EventEndTime", "EventLastReplayedTime", "ReplayStartTime", "ReplayEndTime"} <= keys(d)
    time.sleep(1.0)
    assert sorted(replayed(receiver, paths["r1"], replay)) == sorted(first)
    assert replayed(receiver, paths["r2"], replay) == [], "r2 was not named in FilterArns"

    listed = events.list_replays(EventSourceArn=archive_arn)["Replays"]
    assert [r["ReplayName"] for r in listed] == [replay]
    assert listed[0]["State"] == "COMPLETED"
    assert [r["ReplayName"] for r in events.list_replays(NamePrefix=replay, State="COMPLETED")["Replays"]] == [replay]
    assert events.list_replays(NamePrefix=replay, State="RUNNING")["Replays"] == []

    with pytest.raises(ClientError) as exc:
        events.cancel_replay(ReplayName=replay)
    assert code(exc) == "IllegalStatusException"
    with pytest.raises(ClientError) as exc:
        events.start_replay(ReplayName=replay, EventSourceArn=archive_arn,
                            EventStartTime=at(start), EventEndTime=at(middle),
                            Destination={"Arn": bus_arn(bus)})
    assert code(exc) == "ResourceAlreadyExistsException"

    events.delete_archive(ArchiveName=name)
    with pytest.raises(ClientError) as exc:
        events.describe_archive(ArchiveName=name)
    assert code(exc) == "ResourceNotFoundException"


def test_error_codes(strait: StraitServer) -> None:
    bus, other = unique("arce"), unique("arce2")
    strait.ensure_bus(bus)
    strait.ensure_bus(other)
    events = client(strait)
    name = unique("archive")
    events.create_archive(ArchiveName=name, EventSourceArn=bus_arn(bus))
    archive_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:archive/{name}"
    now = time.time()

    def fails(call: Any, **kw: Any) -> str:
        with pytest.raises(ClientError) as exc:
            call(**kw)
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert exc.value.response["Error"]["Message"]
        return code(exc)

    assert fails(events.create_archive, ArchiveName=name, EventSourceArn=bus_arn(bus)) \
        == "ResourceAlreadyExistsException"
    # Archive names are global: the same name on another bus is taken too.
    assert fails(events.create_archive, ArchiveName=name, EventSourceArn=bus_arn(other)) \
        == "ResourceAlreadyExistsException"
    assert fails(events.create_archive, ArchiveName=unique("a"),
                 EventSourceArn=bus_arn(unique("missing"))) == "ResourceNotFoundException"
    assert fails(events.create_archive, ArchiveName=unique("a"), EventSourceArn=bus_arn(bus),
                 EventPattern="{not json") == "InvalidEventPatternException"
    assert fails(events.create_archive, ArchiveName=unique("a"), EventSourceArn=bus_arn(bus),
                 EventPattern=json.dumps({"source": [{"prefix": 3}]})) == "InvalidEventPatternException"
    assert fails(events.describe_archive, ArchiveName=unique("missing")) == "ResourceNotFoundException"
    assert fails(events.update_archive, ArchiveName=unique("missing")) == "ResourceNotFoundException"
    assert fails(events.delete_archive, ArchiveName=unique("missing")) == "ResourceNotFoundException"
    assert fails(events.describe_replay, ReplayName=unique("missing")) == "ResourceNotFoundException"
    assert fails(events.cancel_replay, ReplayName=unique("missing")) == "ResourceNotFoundException"
    window = {"EventStartTime": at(now - 60), "EventEndTime": at(now - 30),
              "Destination": {"Arn": bus_arn(bus)}}
    assert fails(events.start_replay, ReplayName=unique("r"),
                 EventSourceArn=f"arn:aws:events:{REGION}:{ACCOUNT}:archive/{unique('missing')}",
                 **window) == "ResourceNotFoundException"
    # A bad window: end before start, end in the future.
    assert fails(events.start_replay, ReplayName=unique("r"), EventSourceArn=archive_arn,
                 EventStartTime=at(now - 30), EventEndTime=at(now - 60),
                 Destination={"Arn": bus_arn(bus)}) == "ValidationException"
    assert fails(events.start_replay, ReplayName=unique("r"), EventSourceArn=archive_arn,
                 EventStartTime=at(now - 30), EventEndTime=at(now + 3600),
                 Destination={"Arn": bus_arn(bus)}) == "ValidationException"
    # Only to the archive's own bus, only its rules.
    assert fails(events.start_replay, ReplayName=unique("r"), EventSourceArn=archive_arn,
                 **{**window, "Destination": {"Arn": bus_arn(other)}}) == "ValidationException"
    assert fails(events.start_replay, ReplayName=unique("r"), EventSourceArn=archive_arn,
                 **{**window, "Destination": {"Arn": bus_arn(bus), "FilterArns": [
                     f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{bus}/{unique('nope')}"]}}) \
        == "ResourceNotFoundException"
    assert fails(events.list_archives, State="SOMETIMES") == "ValidationException"


def test_shapes_match_moto(strait: StraitServer, tmp_path: Path) -> None:
    """The same archive and replay described by moto and by Strait have the same keys."""
    moto = Moto(tmp_path)
    try:
        moto.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start moto_server: {exc}", pytrace=False)
    try:
        m = moto.client("events")
        s = client(strait)
        bus = unique("shape")
        m.create_event_bus(Name=bus)
        strait.ensure_bus(bus)
        name = unique("archive")
        answers = []
        for c in (s, m):
            arn = c.describe_event_bus(Name=bus)["Arn"]
            created = c.create_archive(ArchiveName=name, EventSourceArn=arn,
                                       EventPattern=json.dumps({"source": ["a"]}),
                                       RetentionDays=2, Description="d")
            updated = c.update_archive(ArchiveName=name, Description="e")
            described = c.describe_archive(ArchiveName=name)
            listed = c.list_archives(NamePrefix=name)["Archives"][0]
            now = time.time()
            started = c.start_replay(ReplayName=name, EventSourceArn=created["ArchiveArn"],
                                     EventStartTime=at(now - 120), EventEndTime=at(now - 60),
                                     Destination={"Arn": arn})
            replay = wait_until("COMPLETED", lambda: (lambda r: r if r["State"] == "COMPLETED" else None)(
                c.describe_replay(ReplayName=name)))
            replays = c.list_replays(NamePrefix=name)["Replays"][0]
            with pytest.raises(ClientError) as exc:
                c.describe_archive(ArchiveName=unique("missing"))
            missing = code(exc)
            c.delete_archive(ArchiveName=name)
            answers.append({"create": created, "update": updated, "describe": described,
                            "list": listed, "start": started, "replay": replay,
                            "replays": replays, "missing": missing})
        ours, theirs = answers
        assert ours["missing"] == theirs["missing"] == "ResourceNotFoundException"
        for what in ("create", "update", "start"):
            assert {"State"} <= keys(ours[what]) and {"State"} <= keys(theirs[what])
            # Every key moto answers, Strait answers too (moto may leave some out).
            assert keys(theirs[what]) - {"StateReason"} <= keys(ours[what]), (what, ours[what], theirs[what])
        for what in ("describe", "list", "replay", "replays"):
            missing_keys = keys(theirs[what]) - keys(ours[what]) - {"StateReason", "KmsKeyIdentifier"}
            assert not missing_keys, (what, missing_keys, ours[what], theirs[what])
        for what, arn in (("create", "ArchiveArn"), ("start", "ReplayArn")):
            assert ours[what][arn].split(":", 5)[5] == theirs[what][arn].split(":", 5)[5]
        assert ours["describe"]["EventSourceArn"].split(":", 5)[5] == \
            theirs["describe"]["EventSourceArn"].split(":", 5)[5]
        assert ours["replay"]["Destination"]["Arn"].split(":", 5)[5] == \
            theirs["replay"]["Destination"]["Arn"].split(":", 5)[5]
    finally:
        moto.stop()
