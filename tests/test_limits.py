"""The limiter classes, on an injected clock: no sockets, no sleeping."""

from __future__ import annotations

import socket

import pytest

from node.limits import (
    ConnectionLimiter,
    FloodGuard,
    Pacer,
    TokenBucket,
    connection_ceiling,
    dead_peer_bound,
    ip_key,
    keepalive_options,
    set_keepalive,
)

# --------------------------------------------------------------------------- token bucket


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.try_take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.try_take(100.4)  # 0.8 of a token
    assert bucket.try_take(100.5)  # 1.0
    assert not bucket.try_take(100.5)
    assert bucket.tokens(1000.0) == 3  # never more than the burst


def test_bucket_reserve_borrows_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=4.0, burst=2, now=0.0)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == pytest.approx(0.25)
    assert bucket.reserve(0.0) == pytest.approx(0.5)  # borrowed twice: twice as long
    assert bucket.tokens(0.5) == pytest.approx(0.0)
    assert bucket.full_at() == pytest.approx(1.0)


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)
    assert bucket.try_take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bucket_refuses_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


# --------------------------------------------------------------------------- flood guard


def test_flood_guard_burst_then_delays_then_disconnects() -> None:
    guard = FloodGuard(rate=10.0, burst=5, disconnect_after=3, now=0.0)
    now = 0.0
    assert [guard.admit(now) for _ in range(5)] == [0.0] * 5
    for _ in range(3):  # over budget: each waits for the next token
        delay = guard.admit(now)
        assert delay == pytest.approx(0.1)
        assert delay is not None
        now += delay  # the session waited
    assert guard.over == 3
    assert guard.admit(now) is None  # the fourth in a row over budget


def test_flood_guard_forgives_a_burst_once_the_client_paused() -> None:
    guard = FloodGuard(rate=10.0, burst=5, disconnect_after=3, now=0.0)
    for _ in range(5):
        guard.admit(0.0)
    assert guard.admit(0.0) == pytest.approx(0.1)
    assert guard.admit(0.1) == pytest.approx(0.1)
    assert guard.over == 2
    assert guard.admit(0.4) == 0.0  # tokens came back, but not the whole burst
    assert guard.over == 2
    assert guard.admit(1.0) == 0.0  # the bucket is full again: the count starts again
    assert guard.over == 0


def test_flood_guard_a_slow_node_does_not_forgive_a_flood() -> None:
    guard = FloodGuard(rate=10.0, burst=5, disconnect_after=2, now=0.0)
    for _ in range(5):
        guard.admit(0.0)
    now = 0.0
    for _ in range(2):
        delay = guard.admit(now)
        assert delay
        now += delay + 0.15  # each command took the node 150 ms to carry out
        assert guard.admit(now) == 0.0  # a token was there: no wait, but no pardon
    assert guard.over == 2
    assert guard.admit(now) is None


def test_flood_guard_steady_client_at_the_rate_is_never_disconnected() -> None:
    guard = FloodGuard(rate=5.0, burst=1, disconnect_after=0, now=0.0)
    for i in range(1000):
        assert guard.admit(i * 0.2) == 0.0


def test_flood_guard_rate_zero_is_unlimited() -> None:
    guard = FloodGuard(rate=0, burst=1, disconnect_after=0, now=0.0)
    assert all(guard.admit(0.0) == 0.0 for _ in range(10_000))


def test_flood_guard_charges_a_command_worth_several() -> None:
    guard = FloodGuard(rate=5.0, burst=20, disconnect_after=2, now=0.0)
    assert guard.admit(0.0, cost=8) == 0.0  # within the burst: at once
    assert guard.admit(0.0, cost=12) == 0.0  # the burst used up exactly
    assert guard.admit(0.0, cost=10) == pytest.approx(2.0)  # 10 tokens at 5/s
    assert guard.over == 1  # one command over budget, however many tokens it took
    assert guard.admit(2.0) == pytest.approx(0.2)  # the loan was paid off by 2.0
    assert guard.over == 2
    assert guard.admit(2.2) is None  # past disconnect_after commands over budget


def test_flood_guard_cost_more_than_the_burst_waits_for_the_rest() -> None:
    guard = FloodGuard(rate=5.0, burst=20, disconnect_after=100, now=0.0)
    assert guard.admit(0.0, cost=50) == pytest.approx(6.0)  # (50 - 20) / 5
    assert guard.admit(6.0, cost=1) == pytest.approx(0.2)


def test_flood_guard_cost_below_one_is_one() -> None:
    guard = FloodGuard(rate=1.0, burst=1, disconnect_after=5, now=0.0)
    assert guard.admit(0.0, cost=0) == 0.0
    assert guard.admit(0.0, cost=0) == pytest.approx(1.0)


# --------------------------------------------------------------------------- pacer


def test_pacer_burst_then_the_rate_and_never_refuses() -> None:
    pacer = Pacer(rate=1.0, burst=5, now=0.0)
    assert [pacer.admit(0.0) for _ in range(5)] == [0.0] * 5
    now = 0.0
    for _ in range(1000):  # a client listing in a loop: slowed to 1/s, never cut off
        delay = pacer.admit(now)
        assert delay == pytest.approx(1.0)
        now += delay
    assert pacer.waited == 1000
    assert pacer.admit(now + 5.0) == 0.0  # after a pause the burst is back


def test_pacer_rate_zero_is_unlimited() -> None:
    pacer = Pacer(rate=0, burst=1, now=0.0)
    assert all(pacer.admit(0.0) == 0.0 for _ in range(10_000))
    assert pacer.waited == 0


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("", ""),
    ("not-an-ip", "not-an-ip"),
])
def test_ip_key(host: str, key: str) -> None:
    assert ip_key(host) == key


# --------------------------------------------------------------------------- connections


def test_limiter_total_cap() -> None:
    lim = ConnectionLimiter(max_total=2, max_per_ip=0, rate_per_ip=0, burst_per_ip=1)
    assert lim.admit("10.0.0.1", 0.0) is None
    assert lim.admit("10.0.0.2", 0.0) is None
    assert lim.admit("10.0.0.3", 0.0) == "node-full"
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.3", 0.0) is None
    assert lim.total == 2


def test_limiter_per_ip_cap_counts_each_address_alone() -> None:
    lim = ConnectionLimiter(max_total=0, max_per_ip=2, rate_per_ip=0, burst_per_ip=1)
    assert [lim.admit("10.0.0.1", 0.0) for _ in range(3)] == [None, None, "per-ip"]
    assert lim.admit("10.0.0.2", 0.0) is None
    assert lim.open_from("10.0.0.1") == 2
    lim.release("10.0.0.1")
    assert lim.open_from("10.0.0.1") == 1
    assert lim.admit("10.0.0.1", 0.0) is None
    # one IPv6 host usually has a whole /64
    assert lim.admit("2001:db8::1", 0.0) is None
    assert lim.admit("2001:db8::2", 0.0) is None
    assert lim.admit("2001:db8::3", 0.0) == "per-ip"


def test_limiter_connection_rate_per_ip() -> None:
    lim = ConnectionLimiter(max_total=0, max_per_ip=0, rate_per_ip=2.0, burst_per_ip=3)
    assert [lim.admit("10.0.0.1", 0.0) for _ in range(4)] == [None, None, None, "ip-rate"]
    assert lim.admit("10.0.0.2", 0.0) is None  # another address has its own bucket
    assert lim.admit("10.0.0.1", 0.5) is None  # one token back after 1 / rate
    assert lim.admit("10.0.0.1", 0.5) == "ip-rate"


def test_limiter_refusal_counts_nothing() -> None:
    lim = ConnectionLimiter(max_total=0, max_per_ip=1, rate_per_ip=1.0, burst_per_ip=1)
    assert lim.admit("10.0.0.1", 0.0) is None
    assert lim.admit("10.0.0.1", 0.0) == "per-ip"  # takes no rate token
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.1", 0.0) == "ip-rate"
    assert lim.total == 0 and lim.open_from("10.0.0.1") == 0
    assert lim.admit("10.0.0.1", 1.0) is None


def test_limiter_forgets_buckets_once_full_again() -> None:
    lim = ConnectionLimiter(max_total=0, max_per_ip=0, rate_per_ip=10.0, burst_per_ip=20)
    for i in range(1000):  # a scan from many addresses
        assert lim.admit(f"10.0.{i // 256}.{i % 256}", i * 0.001) is None
        lim.release(f"10.0.{i // 256}.{i % 256}")
    assert lim.tracked <= 1000
    # a bucket used at t is full by t + burst / rate = t + 2 s
    lim.admit("10.9.9.9", 0.999 + 2.0)
    assert lim.tracked == 1
    lim.admit("10.9.9.8", 100.0)
    assert lim.tracked == 1


@pytest.mark.parametrize(("cap", "fds", "expected"), [
    (10000, 20000, 10000),
    (10000, 1024, 1024 - 64),
    (0, 1024, 1024 - 64),
    (10000, -1, 10000),
    (0, -1, 0),
    (10, 10, 1),
])
def test_connection_ceiling(cap: int, fds: int, expected: int) -> None:
    assert connection_ceiling(cap, fds) == expected


# --------------------------------------------------------------------------- keepalive


class _Recorder:
    def __init__(self) -> None:
        self.set: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int, /) -> None:
        self.set[(level, option)] = value


def test_keepalive_defaults_bound_a_dead_peer_at_sixty_seconds() -> None:
    assert dead_peer_bound(30, 10, 3) == 60
    sock = _Recorder()
    set_keepalive(sock, 30, 10, 3)
    assert sock.set[(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] == 1
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux
        tcp = socket.IPPROTO_TCP
        assert sock.set[(tcp, socket.TCP_KEEPIDLE)] == 30
        assert sock.set[(tcp, socket.TCP_KEEPINTVL)] == 10
        assert sock.set[(tcp, socket.TCP_KEEPCNT)] == 3
        assert sock.set[(tcp, socket.TCP_USER_TIMEOUT)] == 60_000


def test_keepalive_idle_zero_sets_nothing() -> None:
    assert keepalive_options(0, 10, 3) == []
