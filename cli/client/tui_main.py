"""``python -m cli.client.tui_main --node HOST:PORT --nick NICK``: the interactive client
without the rest of the CLI (``hubbub connect`` calls the same :func:`run_interactive`)."""

from __future__ import annotations

import argparse
import sys

from .state import Address
from .tui import run_interactive

__all__ = ["main"]


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.client.tui_main",
                                     description="Chat on a hubbub cluster in this terminal.")
    parser.add_argument("--node", action="append", type=_address, required=True,
                        help="node address HOST:PORT (repeat for failover)")
    parser.add_argument("--nick", required=True, help="your nickname")
    parser.add_argument("--room", action="append", default=[],
                        help="room to join (repeatable; default: lobby)")
    args = parser.parse_args(argv)
    try:
        return run_interactive(args.node, args.nick, args.room)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
