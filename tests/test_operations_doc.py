"""docs/OPERATIONS.md documents every option and environment variable there is."""

from __future__ import annotations

import re
from pathlib import Path

from cli.options import NODE_OPTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md"


def test_every_node_option_and_its_variable_are_in_the_reference() -> None:
    """The table the command is made from (tests/test_options.py: they are the same)."""
    doc = DOC.read_text()
    assert len(NODE_OPTIONS) > 20
    missing = []
    for option in NODE_OPTIONS:
        row = re.search(rf"^\| `{re.escape(option.flag)}` \| `{option.envvar}` \|", doc, re.M)
        if row is None:
            missing.append(f"{option.flag} ({option.envvar})")
    assert not missing, f"document these `hubbub node` options in {DOC.name}: {missing}"
    rows = re.findall(r"^\| `(--[a-z-]+)` \| `HUBBUB_", doc, re.M)
    assert rows == [option.flag for option in NODE_OPTIONS], "one row each, in --help's order"


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
    for option in NODE_OPTIONS:
        flag, default = option.flag, option.value_default
        row = re.search(rf"^\| `{re.escape(flag)}` \| `[^`]*` \| ([^|]*) \|", doc, re.M)
        if row is None or default is None:
            continue  # missing rows: the test above; None: computed (the node id)
        cell = row.group(1).strip()
        if default == "":  # nothing given: the reference says what happens instead
            ok = not cell.startswith("`")
        elif isinstance(default, float) and cell.startswith("`"):
            ok = float(cell.strip("`")) == default
        else:
            ok = cell == _documented(default)
        if not ok:
            wrong.append(f"{flag}: documented {cell}, really {default!r}")
    assert not wrong, f"fix these defaults in {DOC.name}: {wrong}"
