from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest

from .helpers import OPEN_CLIENTS


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    """One in-memory Redis; every client made on it sees the others' pub/sub."""
    return fakeredis.FakeServer()


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly how many tests ran against real redis-server processes."""
    passed = terminalreporter.stats.get("passed", [])
    skipped = terminalreporter.stats.get("skipped", [])
    real = [r for r in passed if "tests/integration/" in r.nodeid]
    real_skipped = [r for r in skipped if "tests/integration/" in r.nodeid]
    terminalreporter.write_line(
        f"real redis-server / subprocess tests: {len(real)} passed, "
        f"{len(real_skipped)} skipped")
