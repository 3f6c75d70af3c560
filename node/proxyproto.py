"""The PROXY protocol header (versions 1 and 2) a load balancer puts before a client's bytes.

Theory of operation
-------------------
A TCP load balancer (HAProxy's ``send-proxy``/``send-proxy-v2``) connects to a node from
its own address; the client's address arrives as a header ahead of the client's first
byte.  A node expects that header only on connections from addresses it was told to
trust (``--proxy-from``), and there it is required: the receiver never guesses whether a
header is present, so a client connecting from elsewhere cannot claim another address,
and one connecting through the balancer cannot add a header of its own (the balancer's
comes first).

:func:`parse` is sans-I/O: given the bytes received so far it answers "need more"
(``None``), a :class:`ProxyHeader` (the client's address and how many bytes the header
took; what follows is the client's), or raises :class:`~node.errors.BadProxyHeader`.

* Version 1 is one text line, at most 107 bytes with its CRLF:
  ``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`` (``TCP6`` likewise) or
  ``PROXY UNKNOWN ...\\r\\n``.
* Version 2 is binary: a 12-byte signature, version/command, family/transport, a 16-bit
  length, then the addresses (and TLVs, skipped).  ``LOCAL`` (the balancer's own health
  check) and ``UNSPEC``/``UNIX`` families carry no client address.

A header without a client address (``UNKNOWN``, ``LOCAL``, an unsupported family) leaves
the connection's own peer address in place: ``ProxyHeader.source`` is None.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import BadProxyHeader

__all__ = ["V1_MAX", "V2_SIGNATURE", "ProxyHeader", "encode_v1", "encode_v2", "parse"]

V1_PREFIX = b"PROXY "
V1_MAX = 107
"""Longest version 1 header, CRLF included (the specification's bound)."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family, length

_FAMILIES = {0x11: (4, 12), 0x21: (6, 36)}  # TCP over IPv4 / IPv6: version, address bytes


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    source: tuple[str, int] | None
    """The client's address and port (None: the header gave none; keep the peer's)."""
    length: int
    """Bytes the header took; the client's own bytes start after them."""


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or None if more bytes are needed."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        return _parse_v2(data) if len(data) >= len(V2_SIGNATURE) else None
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parse_v1(data) if len(data) >= len(V1_PREFIX) else None
    raise BadProxyHeader("no PROXY protocol header from a trusted proxy")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise BadProxyHeader("PROXY v1 header without CRLF within 107 bytes")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise BadProxyHeader("PROXY v1 header is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, end + 2)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise BadProxyHeader("PROXY v1 header must be PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if fields[1] == "TCP4" else 6
    source = _address(fields[2], version)
    _address(fields[3], version)
    sport, _dport = _port(fields[4]), _port(fields[5])
    return ProxyHeader((source, sport), end + 2)


def _address(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise BadProxyHeader(f"PROXY v1 header has a bad address {text[:45]!r}") from None
    if ip.version != version:
        raise BadProxyHeader(f"PROXY v1 header's address {text!r} is not IPv{version}")
    return str(ip)


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") \
            or int(text) > 65535:
        raise BadProxyHeader(f"PROXY v1 header has a bad port {text[:8]!r}")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    ver_cmd, family, size = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if ver_cmd >> 4 != 2:
        raise BadProxyHeader(f"PROXY v2 header has version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command > 1:
        raise BadProxyHeader(f"PROXY v2 header has an unknown command {command}")
    total = _V2_FIXED + size
    if len(data) < total:
        return None
    if command == 0 or family not in _FAMILIES:  # LOCAL, or no TCP address to use
        return ProxyHeader(None, total)
    version, needed = _FAMILIES[family]
    if size < needed:
        raise BadProxyHeader(f"PROXY v2 header too short for its family ({size} bytes)")
    body = data[_V2_FIXED:_V2_FIXED + needed]
    half = (needed - 4) // 2
    source = ipaddress.IPv4Address(body[:half]) if version == 4 \
        else ipaddress.IPv6Address(body[:half])
    (sport,) = struct.unpack_from("!H", body, 2 * half)
    return ProxyHeader((str(source), sport), total)


def encode_v1(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """A version 1 header (for tests and tools)."""
    proto = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    return f"PROXY {proto} {source[0]} {dest[0]} {source[1]} {dest[1]}\r\n".encode("ascii")


def encode_v2(source: tuple[str, int] | None, dest: tuple[str, int] | None = None,
              tlvs: bytes = b"") -> bytes:
    """A version 2 header: PROXY with TCP addresses, or LOCAL when ``source`` is None."""
    if source is None or dest is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], dest[1]) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body
