"""cli/accounts.py: secrets from options or files."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from cli.accounts import read_secret


def test_secret_from_a_file_loses_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    assert read_secret("", str(path), "--auth-token") == "s3cret"
    assert read_secret("direct", "", "--auth-token") == "direct"
    assert read_secret("", "", "--auth-token") == ""


def test_secret_refusals(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    for value, path in (("x", str(empty)), ("", str(empty)), ("", str(tmp_path / "none"))):
        with pytest.raises(typer.BadParameter):
            read_secret(value, path, "--auth-token")
