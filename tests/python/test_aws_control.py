"""The AWS-compatible control API on the SigV4 endpoint, driven by unchanged boto3:
DescribeEventBus, ListEventBuses, ListRules (prefix, Limit/NextToken paging),
DescribeRule, AWS's error codes through botocore's ClientError, and the response shapes
compared with moto's answers to the same calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from aws_support import REGION, Moto
from strait_support import StraitServer, unique
from test_aws import INGRESS_KEY, INGRESS_KEY_SECRET, aws_config, start_strait

ACCOUNT = "111122223333"


@pytest.fixture(scope="module")
def strait(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StraitServer]:
    server = start_strait(Path(tmp_path_factory.mktemp("strait-aws-control")), aws_config())
    yield server
    rc = server.crashed()
    logs = server.logs()
    server.stop()
    if rc is not None:
        pytest.fail(f"strait died (exit status {rc})\n{logs}", pytrace=False)


def client(strait: StraitServer) -> Any:
    return boto3.client("events", endpoint_url=strait.base_url, region_name=REGION,
                        aws_access_key_id=INGRESS_KEY, aws_secret_access_key=INGRESS_KEY_SECRET,
                        config=Config(retries={"total_max_attempts": 1}))


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def rule_spec(source: str, enabled: bool = True) -> dict[str, Any]:
    return {"description": f"from {source}", "enabled": enabled,
            "pattern": {"source": [source]},
            "targets": [{"id": "t1", "type": "http", "endpoint": "http://127.0.0.1:9/x"}]}


def test_describe_and_list_buses(strait: StraitServer) -> None:
    bus = unique("ctl")
    strait.ensure_bus(bus)
    events = client(strait)
    d = events.describe_event_bus(Name=bus)
    assert d["Name"] == bus
    assert d["Arn"] == f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{bus}"
    assert d["Description"] == "pytest"
    assert events.describe_event_bus()["Name"] == "default"
    by_arn = events.describe_event_bus(Name=d["Arn"])
    assert by_arn["Name"] == bus

    # Paging through a prefix one bus at a time.
    for i in range(3):
        strait.ensure_bus(f"{bus}-{i}")
    seen: list[str] = []
    token = None
    while True:
        kw: dict[str, Any] = {"NamePrefix": bus, "Limit": 1}
        if token:
            kw["NextToken"] = token
        page = events.list_event_buses(**kw)
        assert len(page["EventBuses"]) <= 1
        seen += [b["Name"] for b in page["EventBuses"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == [bus, f"{bus}-0", f"{bus}-1", f"{bus}-2"]

    with pytest.raises(ClientError) as exc:
        events.describe_event_bus(Name=unique("missing"))
    assert code(exc) == "ResourceNotFoundException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_list_and_describe_rules(strait: StraitServer) -> None:
    bus = unique("ctlr")
    strait.ensure_bus(bus)
    for i in range(5):
        strait.put_rule(bus, f"r{i}", rule_spec(f"app{i}", enabled=i != 2))
    strait.put_rule(bus, "other", rule_spec("x"))
    events = client(strait)

    names: list[str] = []
    token = None
    while True:
        kw: dict[str, Any] = {"EventBusName": bus, "NamePrefix": "r", "Limit": 2}
        if token:
            kw["NextToken"] = token
        page = events.list_rules(**kw)
        for r in page["Rules"]:
            assert r["EventBusName"] == bus
            assert r["Arn"] == f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{bus}/{r['Name']}"
            assert json.loads(r["EventPattern"]) == {"source": [f"app{r['Name'][1:]}"]}
        names += [r["Name"] for r in page["Rules"]]
        token = page.get("NextToken")
        if not token:
            break
    assert names == ["r0", "r1", "r2", "r3", "r4"]

    d = events.describe_rule(Name="r2", EventBusName=bus)
    assert d["State"] == "DISABLED"
    assert d["Description"] == "from app2"
    assert d["Arn"] == f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{bus}/r2"
    assert events.describe_rule(Name="r1", EventBusName=bus)["State"] == "ENABLED"

    with pytest.raises(ClientError) as exc:
        events.describe_rule(Name="nope", EventBusName=bus)
    assert code(exc) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        events.list_rules(EventBusName=unique("missing"))
    assert code(exc) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        events.list_rules(EventBusName=bus, NextToken="not-a-token")
    assert code(exc) == "ValidationException"
    assert "NextToken" in exc.value.response["Error"]["Message"]


def test_unsupported_operation_and_bad_signature(strait: StraitServer) -> None:
    events = client(strait)
    with pytest.raises(ClientError) as exc:
        events.list_connections()
    assert code(exc) == "UnknownOperationException"
    assert "ListRules" in exc.value.response["Error"]["Message"]
    bad = boto3.client("events", endpoint_url=strait.base_url, region_name=REGION,
                       aws_access_key_id=INGRESS_KEY, aws_secret_access_key="wrong",
                       config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(ClientError) as exc:
        bad.list_event_buses()
    assert code(exc) == "InvalidSignatureException"


def test_shapes_match_moto(strait: StraitServer, tmp_path: Path) -> None:
    """The same bus and rule described by moto and by Strait have the same keys."""
    moto = Moto(tmp_path)
    try:
        moto.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start moto_server: {exc}", pytrace=False)
    try:
        m = moto.client("events")
        bus = unique("shape")
        m.create_event_bus(Name=bus, Description="pytest")
        m.put_rule(Name="r", EventBusName=bus, EventPattern=json.dumps({"source": ["a"]}),
                   State="ENABLED", Description="d")
        strait.ensure_bus(bus)
        strait.put_rule(bus, "r", {**rule_spec("a"), "description": "d"})
        s = client(strait)

        def keys(d: dict[str, Any]) -> set[str]:
            return {k for k in d if k != "ResponseMetadata"}

        ours, theirs = s.describe_rule(Name="r", EventBusName=bus), m.describe_rule(
            Name="r", EventBusName=bus)
        core = {"Name", "Arn", "EventPattern", "State", "Description", "EventBusName"}
        assert core <= keys(ours) and core <= keys(theirs), (ours, theirs)
        assert ours["Arn"].split(":", 5)[5] == theirs["Arn"].split(":", 5)[5]
        lr_ours = s.list_rules(EventBusName=bus)["Rules"][0]
        lr_theirs = m.list_rules(EventBusName=bus)["Rules"][0]
        assert core <= set(lr_ours) and core <= set(lr_theirs)
        b_ours, b_theirs = s.describe_event_bus(Name=bus), m.describe_event_bus(Name=bus)
        assert {"Name", "Arn"} <= keys(b_ours) and {"Name", "Arn"} <= keys(b_theirs)
        assert b_ours["Arn"].split(":", 5)[5] == b_theirs["Arn"].split(":", 5)[5]
        with pytest.raises(ClientError) as exc:
            m.describe_rule(Name="nope", EventBusName=bus)
        with pytest.raises(ClientError) as exc2:
            s.describe_rule(Name="nope", EventBusName=bus)
        assert code(exc) == code(exc2) == "ResourceNotFoundException"
    finally:
        moto.stop()
