"""Memory per idle connection: how much a node's resident set grows per open client.

Starts its own ``redis-server`` on a free port and one ``hubbub node`` (no connection caps,
a registration timeout long enough to stay idle), opens CONNECTIONS plain TCP connections
that read the greeting and then say nothing (or, with ``--register``, choose a nickname in
a room of their own first), and reports the node's VmRSS before and after:

    python benchmarks/idle_rss.py --connections 10000
    python benchmarks/idle_rss.py --connections 5000 --register

The open-file limit is raised to its hard limit (node and clients each need one per
connection).  Everything it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time

from hot_path import processes  # type: ignore[import-not-found]


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def node_pid(port: int) -> int:
    """The pid of the process listening on ``port`` (from /proc/net/tcp and fd links)."""
    import os
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port:
                inode = parts[9]
    if inode is None:
        raise RuntimeError("listener not found")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError("listener's process not found")


def read_until(sock: socket.socket, marker: bytes) -> None:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--register", action="store_true",
                    help="register each connection (JSON hello, a room of its own)")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with processes(1, ["--register-timeout", "86400", "--backlog", "4096"]) as ports:
        port = ports[0]
        pid = node_pid(port)
        warm = socket.create_connection(("127.0.0.1", port))
        read_until(warm, b"\n")
        time.sleep(1.0)
        before = vm_rss_kib(pid)
        socks = []
        t0 = time.monotonic()
        for i in range(args.connections):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
            if args.register:
                s.sendall(json.dumps({"op": "hello", "nick": f"idle{i}",
                                      "rooms": [f"r{i}"]}).encode() + b"\n")
        for s in socks:
            read_until(s, b'"ev":"join"' if args.register else b"nickname")
        took = time.monotonic() - t0
        time.sleep(2.0)
        after = vm_rss_kib(pid)
        n = args.connections
        print(f"{n} idle connections{' (registered)' if args.register else ''} "
              f"(set up in {took:.1f} s): node VmRSS {before / 1024:.1f} MiB -> "
              f"{after / 1024:.1f} MiB, {(after - before) / n:.1f} KiB per connection",
              file=sys.stdout)
        for s in socks:
            s.close()
        warm.close()


if __name__ == "__main__":
    main()
