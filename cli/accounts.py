"""``hubbub account``: look after the accounts of an ``--auth accounts`` cluster in Redis."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from node.config import NodeConfig
from node.errors import RelayUnavailable
from node.keys import Keys
from node.names import fold_nick
from node.security import AccountStore, Hasher
from node.startup import mode_problem
from node.topology import ClusterTopology

from .redis_client import connect_redis
from .run_node import shard_url

__all__ = ["account_app", "read_secret"]

account_app = typer.Typer(
    help="Accounts of an --auth accounts cluster (stored in its Redis).",
    no_args_is_help=True,
)

_MIN_PASSWORD = NodeConfig(node_id="defaults").min_password

_Url = Annotated[str, typer.Option(envvar="HUBBUB_REDIS_URL", help="Redis URL of the cluster.")]
_Prefix = Annotated[str, typer.Option(envvar="HUBBUB_PREFIX",
                                      help="Prefix of the cluster's Redis keys.")]
_Ca = Annotated[str, typer.Option(envvar="HUBBUB_REDIS_CA",
                                  help="PEM CA certificates for a rediss:// Redis.")]


def read_secret(value: str, path: str, what: str) -> str:
    """A secret given directly or in a file (its surrounding whitespace removed)."""
    if value and path:
        raise typer.BadParameter(f"give {what} or {what}-file, not both")
    if not path:
        return value
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {what}-file: {exc}") from exc
    if not secret:
        raise typer.BadParameter(f"{what}-file {path} is empty")
    return secret


def _run(url: str, prefix: str, ca: str, job: Any) -> Any:
    async def main() -> Any:
        redis = connect_redis(url, 5.0, max_connections=2, ca=ca or None)
        topology: ClusterTopology | None = None
        try:
            if await _is_cluster_node(redis):  # the accounts live on one of its masters
                topology = await ClusterTopology.discover(redis, lambda host, port: (
                    connect_redis(shard_url(url, host, port), 5.0, max_connections=2,
                                  ca=ca or None)))
            return await job(AccountStore(topology or redis, Keys(prefix)))
        finally:
            if topology is not None:
                await topology.aclose()
            await redis.aclose()

    try:
        return asyncio.run(main())
    except RelayUnavailable as exc:
        typer.echo(f"! {exc.text}: {exc.__cause__}", err=True)
        raise typer.Exit(1) from None


async def _is_cluster_node(redis: Redis) -> bool:
    """Whether the URL names a node of a Redis Cluster (HELLO says ``mode: cluster``);
    one that cannot say is taken for a standalone Redis (the command then fails as it
    would)."""
    try:
        hello = await redis.execute_command("HELLO")  # type: ignore[no-untyped-call]
    except RedisError:
        return False
    return mode_problem(hello, cluster=False) is not None


@account_app.command("oper")
def oper(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    off: Annotated[bool, typer.Option("--off", help="Remove the operator flag instead.")
                   ] = False,
    redis_url: _Url = "redis://localhost:6379/0",
    prefix: _Prefix = "hubbub:",
    redis_ca: _Ca = "",
) -> None:
    """Flag an account as an operator (its next login is one), or --off to unflag it."""
    folded = fold_nick(name)

    async def job(store: AccountStore) -> bool:
        if await store.get(folded) is None:
            return False
        await store.set_oper(folded, not off)
        return True

    if not _run(redis_url, prefix, redis_ca, job):
        typer.echo(f"! no account named {name}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name} is {'no longer ' if off else ''}an operator")


@account_app.command("password")
def password(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    password_file: Annotated[str, typer.Option(
        help="Read the new password from this file (default: standard input when it is "
             "not a terminal, else a prompt).", show_default=False)] = "",
    min_password: Annotated[int, typer.Option(
        help="Shortest password accepted (the cluster's --min-password).")
                            ] = _MIN_PASSWORD,
    redis_url: _Url = "redis://localhost:6379/0",
    prefix: _Prefix = "hubbub:",
    redis_ca: _Ca = "",
) -> None:
    """Set a new password for an account (one whose owner lost it)."""
    if password_file:
        new = read_secret("", password_file, "--password")
    elif not sys.stdin.isatty():
        new = sys.stdin.readline().rstrip("\r\n")
    else:
        new = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    if len(new) < min_password:
        raise typer.BadParameter(f"a password needs at least {min_password} characters")
    folded = fold_nick(name)

    async def job(store: AccountStore) -> bool:
        hasher = Hasher(1, 0)
        try:
            encoded = await hasher.hash(new)
        finally:
            hasher.close()
        return await store.set_hash(folded, encoded)

    if not _run(redis_url, prefix, redis_ca, job):
        typer.echo(f"! no account named {name}", err=True)
        raise typer.Exit(1)
    typer.echo(f"the password of {name} is changed")


@account_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    redis_url: _Url = "redis://localhost:6379/0",
    prefix: _Prefix = "hubbub:",
    redis_ca: _Ca = "",
) -> None:
    """Delete an account: its name becomes free for guests again."""
    folded = fold_nick(name)

    async def job(store: AccountStore) -> bool:
        return await store.delete(folded)

    if not _run(redis_url, prefix, redis_ca, job):
        typer.echo(f"! no account named {name}", err=True)
        raise typer.Exit(1)
    typer.echo(f"deleted the account {name}")


@account_app.command("list")
def list_accounts(
    redis_url: _Url = "redis://localhost:6379/0",
    prefix: _Prefix = "hubbub:",
    redis_ca: _Ca = "",
) -> None:
    """Every account: name, created (UTC), operator flag."""
    from .client.shown import safe

    async def job(store: AccountStore) -> Any:
        return await store.all()

    for _, account, is_oper in _run(redis_url, prefix, redis_ca, job):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(account.created))
        typer.echo(f"{safe(account.name)}\t{created}\t{'oper' if is_oper else '-'}")
