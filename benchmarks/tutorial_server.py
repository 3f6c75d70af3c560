"""The tutorial design hubbub grew from, re-implemented to be measured against.

This is the classic "chat server with threads" from socket tutorials, kept as it is —
including what is wrong with it — so ``hubbub bench --baseline tutorial`` can show what
each of hubbub's choices buys:

* one thread per client, blocking sockets;
* the server sends a ``GET_NAME`` prompt and takes the first ``recv(1024)`` as the name;
* every later ``recv(1024)`` is one "message", whatever it holds: no framing, so two
  lines read together go out as one, and a line cut by the read goes out in two pieces;
* broadcasting loops ``send()`` over every client socket (the sender included) under one
  lock: one client that stops reading fills its socket buffer, ``send()`` blocks, and the
  lock stops everyone else;
* ``q``, ``exit``, ``close`` or ``disconnect`` leaves.

It speaks just enough of the hubbub text protocol for the same load generator: prompts
and notices start with ``* `` and a message goes out as ``[lobby] NAME: TEXT``.

    python benchmarks/tutorial_server.py --port 5070
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from types import FrameType

__all__ = ["TutorialServer"]

QUIT_WORDS = {"q", "exit", "close", "disconnect"}


class TutorialServer:
    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self.clients: dict[socket.socket, str] = {}
        self.lock = threading.Lock()

    def serve_forever(self) -> None:
        while True:
            conn, _addr = self.listener.accept()
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def broadcast(self, message: str) -> None:
        data = message.encode()
        with self.lock:
            for sock in list(self.clients):
                with contextlib.suppress(OSError):
                    sock.send(data)  # may block, may send only part: as in the tutorial

    def handle(self, conn: socket.socket) -> None:
        name = ""
        try:
            conn.send(b"* GET_NAME: type your name and press enter\n")
            name = conn.recv(1024).decode(errors="replace").strip()
            if not name or name in QUIT_WORDS:
                return
            conn.send(f"* welcome {name}! type q to quit\n".encode())
            with self.lock:
                self.clients[conn] = name
            self.broadcast(f"* {name} joined lobby\n")
            while True:
                data = conn.recv(1024)
                if not data:
                    break
                text = data.decode(errors="replace")
                if text.strip() in QUIT_WORDS:
                    break
                self.broadcast(f"[lobby] {name}: {text}")
        except OSError:
            pass
        finally:
            with self.lock:
                self.clients.pop(conn, None)
            conn.close()
            if name:
                self.broadcast(f"* {name} quit\n")


def main() -> None:
    ap = argparse.ArgumentParser(description="The thread-per-client tutorial chat server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5070, help="0: any free port")
    args = ap.parse_args()
    server = TutorialServer(args.host, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)  # the client threads are daemons: they go with the process

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on {args.host}:{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
