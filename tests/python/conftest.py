"""Fixtures for the CloudEvents conformance suite.

``STRAIT_BIN`` must point at the ``strait`` binary (scripts/test sets it to
target/debug/strait). One ``strait serve --dev`` process serves the whole session;
each test isolates itself with a unique event source, rule name and receiver path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from strait_support import Receiver, StraitServer, unique

_servers: list[StraitServer] = []


@pytest.fixture(scope="session")
def strait(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StraitServer]:
    binary = os.environ.get("STRAIT_BIN", "")
    if not binary:
        pytest.fail(
            "STRAIT_BIN is not set: point it at the strait binary, e.g. "
            "STRAIT_BIN=$PWD/target/debug/strait (scripts/test does this)",
            pytrace=False,
        )
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"STRAIT_BIN={binary!r} is not an executable file", pytrace=False)

    server = StraitServer(binary, Path(tmp_path_factory.mktemp("strait")))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    _servers.append(server)
    yield server
    rc = server.crashed()
    server.stop()
    _servers.remove(server)
    if rc is not None:
        pytest.fail(f"strait died during the test session (exit status {rc})\n{server.logs()}",
                    pytrace=False)


@pytest.fixture(scope="session")
def default_bus(strait: StraitServer) -> str:
    strait.ensure_bus("default")
    return "default"


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    rx.start()
    yield rx
    rx.stop()


@pytest.fixture
def source() -> str:
    """A unique CloudEvents source for this test."""
    return f"urn:strait:pytest:{unique('src')}"


@pytest.fixture
def make_rule(
    strait: StraitServer, default_bus: str, receiver: Receiver
) -> Iterator[Callable[..., tuple[str, str]]]:
    """Create a rule on bus ``default`` matching ``source`` with one http target on
    the receiver; returns (rule name, receiver path). Rules are deleted afterwards."""
    created: list[str] = []

    def _make(source: str, mode: str, **target_extra: Any) -> tuple[str, str]:
        name = unique("pytest")
        url, path = receiver.endpoint(name)
        target = {"id": "receiver", "type": "http", "endpoint": url, "mode": mode}
        target.update(target_extra)
        spec = {
            "description": f"pytest {mode} round trip",
            "enabled": True,
            "pattern": {"source": [source]},
            "targets": [target],
        }
        strait.put_rule(default_bus, name, spec)
        created.append(name)
        return name, path

    yield _make
    for name in created:
        strait.delete_rule(default_bus, name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _servers:
        for server in _servers:
            rc = server.crashed()
            state = "running" if rc is None else f"EXITED with status {rc}"
            report.sections.append((f"strait server ({state})", server.logs()))
