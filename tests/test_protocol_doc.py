"""docs/PROTOCOL.md lists every error code a client can receive."""

from __future__ import annotations

from pathlib import Path

import node.errors as errors

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"

NOT_SENT = {"protocol-error", "command-error", "closed", "redis-misconfigured",
            "bad-proxy-header", "startup"}
"""Codes of base classes and of errors that never reach a client."""


def test_every_error_code_is_in_the_table() -> None:
    doc = DOC.read_text()
    codes = {getattr(errors, name).code for name in errors.__all__}
    missing = sorted(c for c in codes - NOT_SENT if f"| `{c}` |" not in doc)
    assert not missing, f"add these error codes to {DOC.name} section 8: {missing}"
