"""Half-open connection probe, run inside a private network namespace.

``unshare -n sh -c 'ip link set lo up && python -m tests.integration.halfopen_probe MODE'``

An in-process node (fakeredis) with keepalive 1 s idle, 1 s interval, 2 probes (a 3 s
bound); "victim" and "watcher" register; then an nftables rule drops every packet the
victim sends, as if its machine had vanished without closing the connection.  In mode
``silent`` nothing is sent to the victim afterwards (keepalive must find it); in mode
``busy`` the watcher says something, so the node has data in flight to the victim
(``TCP_USER_TIMEOUT`` must find it).  Prints one JSON object: the quit line the watcher
saw, the seconds it took, and whether the name could be claimed again.
"""

from __future__ import annotations

import asyncio
import json
import sys

import fakeredis

from ..helpers import running_node, text_user

RULES = """
table inet halfopen {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp sport {port} drop
    }}
}}
"""


async def main(mode: str) -> None:
    async with running_node(fakeredis.FakeServer(), keepalive_idle=1, keepalive_interval=1,
                            keepalive_count=2) as node:
        assert node.port is not None
        victim = await text_user(node.port, "victim")
        watcher = await text_user(node.port, "watcher")
        await victim.expect("* watcher joined lobby")
        victim_port = victim.writer.get_extra_info("sockname")[1]
        nft = await asyncio.create_subprocess_exec("nft", "-f", "-",
                                                   stdin=asyncio.subprocess.PIPE)
        await nft.communicate(RULES.format(port=victim_port).encode())
        assert nft.returncode == 0, "nft refused the rule"
        loop = asyncio.get_running_loop()
        cut = loop.time()
        if mode == "busy":
            await watcher.send("are you still there?")
        line = await watcher.expect("* victim quit", timeout=30)
        seconds = loop.time() - cut
        again = await text_user(node.port, "victim")
        await again.close()
        await victim.close()
        print(json.dumps({"line": line, "seconds": round(seconds, 2), "reclaimed": True}))


if __name__ == "__main__":
    if sys.argv[1:] not in (["silent"], ["busy"]):
        sys.exit("usage: python -m tests.integration.halfopen_probe silent|busy")
    asyncio.run(main(sys.argv[1]))
