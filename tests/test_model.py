"""Tests for node.model: the closed command and event sets."""

from __future__ import annotations

import dataclasses

import node.model as model
from node.model import (
    COMMAND_TYPES,
    EVENT_TYPES,
    Auth,
    BanEntry,
    Command,
    CommandBase,
    Event,
    Hello,
    Login,
    Notice,
    Oper,
    Password,
    Quit,
    Register,
    Say,
)


def test_secrets_never_show_in_a_repr() -> None:
    for cmd in (Auth(secret="S1"), Login(nick="a", password="S1"), Register(password="S1"),
                Password(password="S1"), Oper(secret="S1"),
                Hello(nick="a", secret="S1", password="S1")):
        assert "S1" not in repr(cmd)


def test_every_command_and_event_class_is_in_its_union() -> None:
    # a class left out of its union would escape the exhaustiveness checks
    classes = [getattr(model, name) for name in model.__all__]
    messages = {c for c in classes if isinstance(c, type) and dataclasses.is_dataclass(c)}
    commands = {c for c in messages if issubclass(c, CommandBase) and c is not CommandBase}
    assert commands == set(COMMAND_TYPES)
    assert messages - commands - {CommandBase, BanEntry} == set(EVENT_TYPES)
    assert len(COMMAND_TYPES) == len(set(COMMAND_TYPES))
    assert not set(COMMAND_TYPES) & set(EVENT_TYPES)


def test_the_unions_work_in_isinstance() -> None:
    assert isinstance(Say(text="x"), Command)
    assert isinstance(Quit(), Command | Event)
    assert not isinstance(Notice(text="x"), Command)
    assert isinstance(Notice(text="x"), Event)
    assert not isinstance(BanEntry("mute", "bob", "op", None, 1.0), Event)
