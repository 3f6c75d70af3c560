"""Run irctest (the IRC conformance suite, progval/irctest) against two hubbub nodes.

Both an irctest controller (``--controller hubbub_irctest``) and a pytest plugin
(``-p hubbub_irctest``).  Each test gets two fresh nodes on one redis-server that this
process starts on a free port (one per pytest worker), kept apart from the other tests by
a prefix of their own.  The plugin sends the test's first client to node A, its second
to node B, its third to A again…, so what one client does reaches the other across Redis.
docs/IRC.md ("Conformance") has the command and the counts.

irctest synchronises a client by a PING on that client's own connection; an event relayed
from the other node can arrive after that PONG, so the controller waits
``sync_sleep_time`` (0.1 s) before each sync, as irctest's controllers of distributed
servers do.  irctest asserts the server name ``My.Little.Server``, the operator
``operuser``/``operpassword`` and accounts with the password ``sesame``, and opens several
connections per test from one address, so the nodes get those settings and no per-address
or rate limits.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

pytest.register_assert_rewrite("irctest.cases")

from irctest import cases  # noqa: E402
from irctest.basecontrollers import (  # noqa: E402
    BaseServerController,
    DirectoryBasedController,
)
from irctest.runner import NotImplementedByController  # noqa: E402
from irctest.specifications import Capabilities  # noqa: E402

SERVER_NAME = "My.Little.Server"
_tests = itertools.count()
_redis_url: str | None = None


def _wait_listening(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # another process: nothing to wait on but its port


def redis_url() -> str:
    """This process's redis-server, started on first use and stopped at exit."""
    global _redis_url
    if _redis_url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(proc.terminate)
        _wait_listening(port)
        _redis_url = f"redis://127.0.0.1:{port}/0"
    return _redis_url


class HubbubController(BaseServerController, DirectoryBasedController):
    software_name = "hubbub"
    supported_sasl_mechanisms = {"PLAIN"}
    supports_sts = False
    sync_sleep_time = 0.1
    # declared capabilities are tested (a NAK fails); the others' tests are skipped
    capabilities = frozenset({Capabilities.ECHO_MESSAGE, Capabilities.SERVER_TIME,
                              Capabilities.MESSAGE_TAGS, Capabilities.MULTI_PREFIX})
    isupport = {"CASEMAPPING": "ascii", "CHANTYPES": "#", "NICKLEN": "32",
                "PREFIX": "(ov)@+", "NETWORK": SERVER_NAME, "UTF8ONLY": None}

    nodes: list[tuple[str, int]]
    """Where the plugin sends clients: each node's IRC port, in turn."""
    text_ports: list[int]
    procs: list[subprocess.Popen[bytes]]

    def run(self, hostname: str, port: int, *, password: str | None, ssl: bool,
            run_services: bool, faketime: str | None, websocket_hostname: str | None,
            websocket_port: int | None) -> None:
        if ssl:
            raise NotImplementedByController("TLS")
        if websocket_port is not None:
            raise NotImplementedByController("Websocket")
        self.create_config()
        assert self.directory is not None
        self.hostname, self.port = hostname, port
        self.nodes = [(hostname, port), self.get_hostname_and_port()]
        self.text_ports = [self.get_hostname_and_port()[1] for _ in self.nodes]
        args = [
            "--redis-url", redis_url(), "--prefix", f"irctest{os.getpid()}-{next(_tests)}:",
            "--host", "127.0.0.1", "--http-port", "0", "--shutdown-grace", "1",
            "--max-per-ip", "0", "--conn-rate-per-ip", "0", "--rate", "0",
            "--list-rate", "0", "--room-create-rate", "0", "--max-rooms-per-user", "0",
            "--login-fails-per-name", "0", "--login-fails-per-ip", "0",
            "--min-password", "1", "--oper-secret", "operpassword",
            "--irc-oper-name", "operuser", "--irc-server-name", SERVER_NAME,
        ]
        if password is not None:
            args += ["--auth", "token", "--auth-token", password]
        elif run_services:
            args += ["--auth", "accounts"]
        self.procs = []
        for i, ((_, irc_port), text_port) in enumerate(
                zip(self.nodes, self.text_ports, strict=True)):
            log = (self.directory / f"node{i}.log").open("w")
            self.procs.append(self.execute(
                [sys.executable, "-m", "cli", "node", "--node-id", f"n{i}",
                 "--port", str(text_port), "--irc-port", str(irc_port), *args],
                stdout=log, stderr=log))
        self.proc = self.procs[0]

    def wait_for_port(self) -> None:
        if not self.port_open:
            for _, port in self.nodes:
                _wait_listening(port)
            self.port_open = True

    def wait_for_services(self) -> None:  # accounts live in the nodes
        self.wait_for_port()

    def check_is_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a hubbub node exited with {proc.returncode}")

    def kill_proc(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None

    def registerUser(self, case: Any, username: str, password: str | None = None) -> None:
        """An account, made through node A's text port (``/register``)."""
        if not password:
            raise NotImplementedByController("accounts without a password")
        self.wait_for_port()
        with socket.create_connection(("127.0.0.1", self.text_ports[0]), timeout=10) as s:
            s.sendall(f"{username}\n/register {password}\n/quit\n".encode())
            said = b""
            while chunk := s.recv(4096):
                said += chunk
        if b"is now registered" not in said:
            raise RuntimeError(f"could not register {username}: {said!r}")


def get_irctest_controller_class() -> type[HubbubController]:
    return HubbubController


_add_client = cases.BaseServerTestCase.addClient


def _add_client_to_next_node(self: Any, name: Any = None, show_io: Any = None) -> Any:
    """irctest's ``addClient``, connecting to the controller's nodes in turn."""
    nodes = getattr(self.controller, "nodes", None)
    if not nodes:
        return _add_client(self, name, show_io)
    turn = getattr(self, "_hubbub_clients", 0)
    self._hubbub_clients = turn + 1
    own = self.hostname, self.port
    self.hostname, self.port = nodes[turn % len(nodes)]
    try:
        return _add_client(self, name, show_io)
    finally:
        self.hostname, self.port = own


cases.BaseServerTestCase.addClient = _add_client_to_next_node
