"""The security side's Redis stores on their own (node.stores): accounts, throttles,
sanctions, on fakeredis."""

from __future__ import annotations

from typing import Any

import pytest

from node.errors import AuthThrottled
from node.keys import Keys
from node.model import BanEntry
from node.stores import Account, AccountStore, Sanctions, Throttle

from . import relaykit
from .relaykit import config

fake_redis = relaykit.fake_redis  # the fixture

KEYS = Keys()
ADDRESS = "192.0.2.7"


# --------------------------------------------------------------------------- accounts


async def test_an_account_is_created_once(fake_redis: Any) -> None:
    accounts = AccountStore(fake_redis, KEYS)
    ann = Account("Ann", "hash-1", 1000.0)
    assert await accounts.create("ann", ann)
    assert not await accounts.create("ann", Account("ANN", "hash-2", 2000.0))
    assert await accounts.get("ann") == ann
    assert await accounts.get("nobody") is None


async def test_a_password_change_is_a_compare_and_set(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    accounts = AccountStore(fake_redis, KEYS)
    await accounts.create("ann", Account("Ann", "hash-1", 1000.0))
    assert await accounts.set_hash("ann", "hash-2")
    assert await accounts.get("ann") == Account("Ann", "hash-2", 1000.0)
    assert not await accounts.set_hash("nobody", "hash-x")
    assert await accounts.get("nobody") is None
    # another node changes the entry between our read and our write: we read again
    real = accounts._set_if_same
    calls = 0

    async def raced(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            theirs = Account("Ann", "theirs", 1000.0).serialize()
            await fake_redis.hset(KEYS.accounts, "ann", theirs)
        return await real(*args, **kwargs)

    monkeypatch.setattr(accounts, "_set_if_same", raced)
    assert await accounts.set_hash("ann", "hash-3")
    assert calls == 2
    assert await accounts.get("ann") == Account("Ann", "hash-3", 1000.0)


async def test_a_password_change_never_brings_back_a_deleted_account(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    accounts = AccountStore(fake_redis, KEYS)
    await accounts.create("ann", Account("Ann", "hash-1", 1000.0))
    real = accounts._set_if_same

    async def deleted_meanwhile(*args: Any, **kwargs: Any) -> Any:
        await accounts.delete("ann")
        return await real(*args, **kwargs)

    monkeypatch.setattr(accounts, "_set_if_same", deleted_meanwhile)
    assert not await accounts.set_hash("ann", "hash-2")
    assert await accounts.get("ann") is None


async def test_operator_flags_listing_and_deletion(fake_redis: Any) -> None:
    accounts = AccountStore(fake_redis, KEYS)
    bo, ann = Account("Bo", "h", 2.0), Account("Ann", "h", 1.0)
    await accounts.create("bo", bo)
    await accounts.create("ann", ann)
    await accounts.set_oper("bo", True)
    assert await accounts.is_oper("bo") and not await accounts.is_oper("ann")
    assert await accounts.all() == [("ann", ann, False), ("bo", bo, True)]
    assert await accounts.delete("bo")
    assert not await accounts.is_oper("bo")  # the flag goes with the account
    assert not await accounts.delete("bo")
    await accounts.set_oper("ann", True)
    await accounts.set_oper("ann", False)
    assert await accounts.all() == [("ann", ann, False)]


# --------------------------------------------------------------------------- throttle


async def test_the_throttle_caps_a_name_and_refunds_a_success(fake_redis: Any) -> None:
    throttle = Throttle(fake_redis, KEYS, config("n1", login_fails_per_name=2,
                                            login_fails_per_ip=100, login_fail_window=60.0))
    await throttle.charge("ann", ADDRESS)
    await throttle.charge("ann", ADDRESS)
    with pytest.raises(AuthThrottled, match="this name"):
        await throttle.charge("ann", ADDRESS)
    assert throttle.refused == 1
    await throttle.charge("bo", ADDRESS)  # another name from the same address
    await throttle.refund("ann", ADDRESS)
    await throttle.charge("ann", ADDRESS)  # the refund made room for one more
    assert 0 < await fake_redis.pttl(KEYS.fail_name("ann")) <= 60_000
    # four charged, one refunded; the refused attempt was never charged
    assert int(await fake_redis.get(KEYS.fail_ip(ADDRESS))) == 3


async def test_the_throttle_caps_an_address_and_leaves_names_alone(fake_redis: Any) -> None:
    throttle = Throttle(fake_redis, KEYS, config("n1", login_fails_per_name=5,
                                            login_fails_per_ip=2))
    await throttle.charge(None, ADDRESS)
    await throttle.charge(None, ADDRESS)
    with pytest.raises(AuthThrottled, match="your address"):
        await throttle.charge(None, ADDRESS)
    with pytest.raises(AuthThrottled):
        await throttle.charge("ann", ADDRESS)  # a name does not get round it
    await throttle.charge(None, "192.0.2.8")
    assert await fake_redis.get(KEYS.fail_name("ann")) is None
    assert await fake_redis.get(KEYS.fail_name("")) is None


async def test_a_counter_at_its_cap_without_a_ttl_is_given_one(fake_redis: Any) -> None:
    """A counter whose expiry was lost must not lock a name out for ever."""
    throttle = Throttle(fake_redis, KEYS, config("n1", login_fails_per_name=3,
                                            login_fail_window=60.0))
    await fake_redis.set(KEYS.fail_name("ann"), 3)
    with pytest.raises(AuthThrottled, match="1m"):
        await throttle.charge("ann", ADDRESS)
    assert 0 < await fake_redis.pttl(KEYS.fail_name("ann")) <= 60_000


# --------------------------------------------------------------------------- sanctions


async def test_a_sanction_is_put_looked_up_and_removed(fake_redis: Any) -> None:
    sanctions = Sanctions(fake_redis, KEYS)
    await sanctions.put("nick-ban", "ann", "Ann", "op", "spam", 60)
    (ban_left, ban), (mute_left, mute) = await sanctions.lookup(
        [("nick-ban", "ann"), ("mute", "ann")])
    assert 59 < ban_left <= 60
    assert ban == {"kind": "nick-ban", "target": "Ann", "by": "op", "reason": "spam"}
    assert (mute_left, mute) == (0.0, {})
    assert await sanctions.remove("nick-ban", "ann")
    assert not await sanctions.remove("nick-ban", "ann")
    assert await sanctions.lookup([("nick-ban", "ann")]) == [(0.0, {})]
    assert await sanctions.listing() == []


async def test_the_listing_sorts_by_time_left_and_drops_what_expired(fake_redis: Any) -> None:
    sanctions = Sanctions(fake_redis, KEYS)
    await sanctions.put("mute", "bo", "Bo", "op", None, 60)
    await sanctions.put("ip-ban", ADDRESS, ADDRESS, "op", "flood", 3600)
    await sanctions.put("nick-ban", "cy", "Cy", "root", None, 600)
    await sanctions.put("nick-ban", "di", "Di", "op", None, 600)
    await fake_redis.delete(KEYS.mute("bo"))  # expired
    await fake_redis.hset(KEYS.sanctions, "nick-ban:di", "not json")  # unreadable: skipped
    listed = await sanctions.listing()
    assert [(e.kind, e.target, e.by, e.reason) for e in listed] == [
        ("ip-ban", ADDRESS, "op", "flood"), ("nick-ban", "Cy", "root", None)]
    assert all(isinstance(e, BanEntry) for e in listed)
    assert 3599 < listed[0].expires_in <= 3600 and 599 < listed[1].expires_in <= 600
    assert not await fake_redis.hexists(KEYS.sanctions, "mute:bo")  # pruned from the index
    assert await fake_redis.hexists(KEYS.sanctions, "nick-ban:di")  # its key is still there
