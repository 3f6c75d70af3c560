"""TLS contexts for the chat port (server side) and for ``hubbub connect --tls`` (client side).

Both refuse anything older than TLS 1.2.  The server's handshake is bounded by
``tls_handshake_timeout`` (asyncio's ``ssl_handshake_timeout``): a client that stalls in
the handshake, or speaks plaintext to a TLS port, is dropped within it and never becomes
a session.
"""

from __future__ import annotations

import ssl

__all__ = ["client_context", "server_context"]


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context serving ``cert`` (PEM, the chain after the leaf) with ``key``.

    Raises:
        OSError, ssl.SSLError: a file is missing or unreadable, or key and certificate
            do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name: against
    the system's CAs, or only against the CA certificates in ``ca`` (PEM) if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
