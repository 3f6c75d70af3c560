"""The node's layers: every import in node/ -- ``TYPE_CHECKING`` ones too -- points down.

The order is declared here, once (docs/ARCHITECTURE.md draws it).  A module may import
only modules of a lower layer; a new module must be given its layer before it can be
imported anywhere; and the pure layer never touches the event loop or Redis.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parent.parent / "node"

LAYERS: tuple[tuple[str, ...], ...] = (
    # bottom: pure -- bytes, text and data in, data out; no event loop, no Redis
    ("errors", "model", "durations", "keys", "config", "backoff", "limits", "outbox",
     "scripts"),
    ("names", "envelope", "proxyproto"),
    ("feeds", "framing", "codec"),
    ("localroom", "textcodec", "jsoncodec", "irccodec"),
    ("protocol", "ircrender"),
    # I/O helpers
    ("pause", "redis_errors", "logs", "tls"),
    ("startup",),
    # the Redis side, behind the relay facade
    ("topology",),
    ("buslink",),
    ("bus", "leases", "publisher", "stores", "redis_watch"),
    ("rooms",),
    ("relay",),
    # what a member is, and what /metrics and /readyz read
    ("user",),
    ("stats",),
    ("gate", "metrics"),
    ("http",),
    # the node's services, each calling only those below it
    ("hub",),
    ("identity",),
    ("security",),
    ("moderation",),
    ("commands",),
    # one connection: the socket's protocol, then its task
    ("connection",),
    ("session",),
    ("ircsession",),
    # the composition root
    ("server",),
)
LEVEL = {module: level for level, layer in enumerate(LAYERS) for module in layer}
PURE = {m for layer in LAYERS[:5] for m in layer}
IO_LIBRARIES = {"asyncio", "redis", "aiohttp", "prometheus_client"}


def modules() -> list[str]:
    return sorted(p.stem for p in NODE.glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(node modules, other top-level packages) that ``module`` imports, at any depth of
    its source: inside functions and ``if TYPE_CHECKING:`` blocks too."""
    tree = ast.parse((NODE / f"{module}.py").read_text())
    ours: set[str] = set()
    others: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 1:
                ours.update([parts[0]] if node.module else [a.name for a in node.names])
            elif node.level == 0 and parts[0] == "node":
                ours.update(parts[1:2] or [a.name for a in node.names])
            elif node.level == 0:
                others.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "node":
                    ours.update(parts[1:2])
                else:
                    others.add(parts[0])
    return ours & set(modules()), others


def test_every_module_has_a_layer() -> None:
    assert sorted(set(modules()) - LEVEL.keys()) == [], "declare the new module's layer"
    assert sorted(LEVEL.keys() - set(modules())) == [], "a declared module is gone"


@pytest.mark.parametrize("module", modules())
def test_imports_point_down(module: str) -> None:
    ours, _ = imports_of(module)
    up = sorted(m for m in ours if LEVEL.get(m, 0) >= LEVEL.get(module, 0))
    assert up == [], f"node/{module}.py imports {up}: not below it in LAYERS"


def test_nothing_imports_the_server() -> None:
    assert [m for m in modules() if "server" in imports_of(m)[0]] == []


@pytest.mark.parametrize("module", ["security", "hub", "identity", "commands", "moderation"])
def test_services_know_no_session_or_connection(module: str) -> None:
    assert imports_of(module)[0] & {"session", "connection"} == set()


@pytest.mark.parametrize("module", sorted(PURE))
def test_the_pure_layer_touches_no_event_loop_and_no_redis(module: str) -> None:
    assert imports_of(module)[1] & IO_LIBRARIES == set()


def test_the_checker_sees_type_checking_and_local_imports(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The reader itself: an import hidden behind TYPE_CHECKING or inside a function
    counts like any other (a checker that missed them could not fail)."""
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .server import X\n"
        "def f():\n    import node.session\n    from . import hub\n    import asyncio\n")
    for name in ("server", "session", "hub"):
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["NODE"]), "NODE", tmp_path)
    assert imports_of("a") == ({"server", "session", "hub"}, {"typing", "asyncio"})
