"""``hubbub bench``: a load generator and its measurements.

Modules, one job each:

* :mod:`.stamp` — the message stamp (sender, sequence, send time) carried in the chat text;
* :mod:`.histogram` — a log-linear latency histogram that merges across processes;
* :mod:`.tracker` — what a receiver saw of each sender: lost, duplicated, out of order;
* :mod:`.layout` — which client talks to which node and sits in which room;
* :mod:`.loadgen` — the asyncio clients (Protocols, one ticker per process, no task per line);
* :mod:`.worker` — a load generator process driven over JSON lines on stdin/stdout;
* :mod:`.driver` — starts the workers, runs a fixed rate or a ramp, merges their figures;
* :mod:`.spawn` — a throwaway local cluster (redis-server and nodes) and readings of it;
* :mod:`.report` — the results table and the JSON document;
* :mod:`.command` — ``hubbub bench`` itself: progress bar, Ctrl+C and SIGTERM, output.

Nothing here imports the node: the bench talks to it only through the wire protocol,
its command line and its HTTP endpoint.
"""
