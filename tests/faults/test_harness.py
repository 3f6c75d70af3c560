"""The fault suite's own helpers (no processes: these run in the fast subset)."""

from __future__ import annotations

import pytest

from .harness import base_args, node_options


def test_node_options_become_flags() -> None:
    assert node_options(max_per_ip=400, outbox_seconds=1.5) == [
        "--max-per-ip", "400", "--outbox-seconds", "1.5"]


def test_an_option_the_node_does_not_have_is_an_error() -> None:
    with pytest.raises(ValueError, match="--max-per-address"):
        node_options(max_per_address=400)
    with pytest.raises(ValueError, match="--no-such-limit"):
        base_args(no_such_limit=1)


def test_later_limits_override_the_unthrottled_defaults() -> None:
    args = base_args(rate=5)
    assert args[args.index("--rate") + 1] == "5"
