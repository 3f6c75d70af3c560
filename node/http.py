"""The node's small HTTP endpoint: /healthz, /readyz and /metrics (aiohttp).

* ``/healthz``: 200 while the process and its event loop run.
* ``/readyz``: 200 when the node is not shutting down, its bus subscription is up, Redis
  answered, and its canary (a message it publishes to its own channel) came back within
  ``ready_window`` — a "deaf" node whose subscription silently died is *not* ready; 503
  with the reasons otherwise.  Load balancers route on this.  Over several shards (a
  Redis Cluster) see :meth:`node.bus.Bus.is_ready`: a shard down for every node is named
  in the reasons without taking the node out.
* ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import NodeMetrics
from .stats import NodeState

__all__ = ["HttpEndpoint"]

log = structlog.get_logger("hubbub.http")


class HttpEndpoint:
    def __init__(self, state: NodeState) -> None:
        self._state = state
        self._metrics = NodeMetrics(state)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        self._app = app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("http endpoint listening", host=host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        state = self._state
        ready, reasons = state.relay.is_ready()
        if state.stopping():
            ready, reasons = False, ["shutting down", *reasons]
        body = {"ready": ready, "node": state.config.node_id, "reasons": reasons,
                "canary_rtt_ms": None if state.relay.canary_rtt is None
                else round(state.relay.canary_rtt * 1000, 3)}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
