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
