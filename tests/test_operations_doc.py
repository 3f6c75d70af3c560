"""docs/OPERATIONS.md documents every option and environment variable there is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.core
import typer.main

from cli.main import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md"


def _node_options() -> list[Any]:
    group: Any = typer.main.get_command(app)
    return [p for p in group.commands["node"].params
            if isinstance(p, typer.core.TyperOption) and p.name != "help"]


def test_every_node_option_and_its_variable_are_in_the_reference() -> None:
    doc = DOC.read_text()
    options = _node_options()
    assert len(options) > 20
    missing = []
    for param in options:
        flag = max(param.opts, key=len)
        envvar = param.envvar if isinstance(param.envvar, str) else None
        row = re.search(rf"^\| `{re.escape(flag)}` \| `{envvar}` \|", doc, re.M)
        if envvar is None or row is None:
            missing.append(f"{flag} ({envvar})")
    assert not missing, f"document these `hubbub node` options in {DOC.name}: {missing}"


def test_client_variables_are_documented() -> None:
    doc = DOC.read_text()
    for var in ("HUBBUB_NODES", "HUBBUB_NICK", "HUBBUB_TLS", "HUBBUB_TLS_CA", "REDIS_PASSWORD"):
        assert f"`{var}`" in doc


def _documented(value: object) -> str:
    """How the reference writes a default: `5051`, `15.0`, off, or a word for none."""
    if value is False:
        return "off"
    return f"`{value}`"


def test_every_documented_default_is_the_real_one() -> None:
    doc = DOC.read_text()
    wrong = []
    for param in _node_options():
        flag = max(param.opts, key=len)
        row = re.search(rf"^\| `{re.escape(flag)}` \| `[^`]*` \| ([^|]*) \|", doc, re.M)
        if row is None or param.default is None:
            continue  # missing rows: the test above; None: computed (the node id)
        cell = row.group(1).strip()
        if param.default == "":  # nothing given: the reference says what happens instead
            ok = not cell.startswith("`")
        elif isinstance(param.default, float) and cell.startswith("`"):
            ok = float(cell.strip("`")) == param.default
        else:
            ok = cell == _documented(param.default)
        if not ok:
            wrong.append(f"{flag}: documented {cell}, really {param.default!r}")
    assert not wrong, f"fix these defaults in {DOC.name}: {wrong}"
