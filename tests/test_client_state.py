"""The client's state as a plain object: no sockets, no event loop."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.client.shown import Shown, plain, safe
from cli.client.state import CATCHUP_PAGE, COMMANDS, Address, ClientState, id_key
from node.errors import ProtocolError
from node.model import Help, History, Join, Me, Part, Quit, Who
from node.protocol import JSON, TEXT, USAGE
from node.textcodec import command_word

A, B = Address("a", 1), Address("b", 2)


def welcomed(state: ClientState, **extra: Any) -> list[dict[str, Any]]:
    _, ops = state.handle({"ev": "welcome", "nick": state.nick, "node": "n1",
                           "rooms": state.rooms, "token": "n1/t", **extra})
    return ops


def msg(room: str, sender: str, text: str, id_: str) -> dict[str, Any]:
    return {"ev": "msg", "room": room, "from": sender, "text": text, "id": id_, "ts": 1.0}


def texts(shown: list[Shown]) -> list[str]:
    return [s.text for s in shown if s.kind in ("msg", "action")]


def history_reply(op: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ev": "history", "room": op["room"], "ref": op["ref"],
            "messages": [{k: v for k, v in m.items() if k not in ("ev", "room")}
                         for m in messages]}


def test_addresses_parse_and_rotate() -> None:
    assert Address.parse("h:7") == Address("h", 7)
    assert Address.parse("h") == Address("h", 5051)
    assert Address.parse(":9") == Address("localhost", 9)
    assert Address.parse("[::1]:5") == Address("::1", 5)
    assert str(Address("::1", 5)) == "[::1]:5"
    for bad in ("", "h:x", "h:0", "h:70000", "[::1", "[::1]x"):
        with pytest.raises(ValueError):
            Address.parse(bad)
    s = ClientState([A, B], "me")
    assert [s.next_address() for _ in range(3)] == [A, B, A]


def test_ids_order_numerically() -> None:
    assert id_key("10-0") > id_key("9-5") > id_key("9-4")
    assert id_key("garbage") == (0, 0)


def test_hello_resumes_once_a_token_is_known() -> None:
    s = ClientState([A], "me", ["lobby", "dev"])
    assert s.hello() == {"op": "hello", "nick": "me", "rooms": ["lobby", "dev"]}
    welcomed(s)
    assert s.hello()["token"] == "n1/t"


def test_first_welcome_fetches_recent_history_and_members() -> None:
    s = ClientState([A], "me")
    ops = welcomed(s)
    assert [o["op"] for o in ops] == ["history", "who"]
    assert "after" not in ops[0] and ops[0]["limit"] > 0


def test_live_messages_wait_for_the_catch_up_then_merge_in_order_once() -> None:
    s = ClientState([A], "me")
    hist, _ = welcomed(s)
    # live messages arrive before the history answer: held back
    assert s.handle(msg("lobby", "bob", "three", "3-0")) == ([], [])
    assert s.handle(msg("lobby", "bob", "two", "2-0")) == ([], [])
    shown, _ = s.handle(history_reply(hist, [msg("lobby", "bob", "one", "1-0"),
                                             msg("lobby", "bob", "two", "2-0")]))
    assert texts(shown) == ["one", "two", "three"]
    # a duplicate of something shown is dropped, a new one shown
    assert texts(s.handle(msg("lobby", "bob", "two", "2-0"))[0]) == []
    assert texts(s.handle(msg("lobby", "bob", "four", "4-0"))[0]) == ["four"]


def test_reconnect_catches_up_after_the_last_id_in_pages() -> None:
    s = ClientState([A, B], "me")
    hist, _ = welcomed(s)
    s.handle(history_reply(hist, [msg("lobby", "bob", "m1", "1-0")]))
    s.disconnected()
    ops = welcomed(s, resumed=True)
    assert ops[0]["after"] == "1-0"
    page = [msg("lobby", "bob", f"p{i}", f"{i + 2}-0") for i in range(CATCHUP_PAGE)]
    shown, more = s.handle(history_reply(ops[0], page))
    assert len(texts(shown)) == CATCHUP_PAGE
    assert more[0]["after"] == f"{CATCHUP_PAGE + 1}-0"
    s.handle(msg("lobby", "bob", "live", f"{CATCHUP_PAGE + 9}-0"))  # held: still paging
    shown, _ = s.handle(history_reply(more[0], [msg("lobby", "bob", "last", "999-0")]))
    assert texts(shown) == ["last"]  # 'live' (id 209-0) is older than 999-0: a duplicate


GAP = "some messages in #lobby are no longer in history"


def notices(shown: list[Shown]) -> list[str]:
    return [s.text for s in shown if s.kind == "notice"]


def test_a_catch_up_the_node_cannot_complete_is_said_once_before_what_is_held() -> None:
    s = ClientState([A, B], "me")
    hist, _ = welcomed(s)
    s.handle(history_reply(hist, [msg("lobby", "bob", "m1", "1-0")]))
    s.disconnected()
    ops = welcomed(s, resumed=True)
    s.handle(msg("lobby", "bob", "live", "900-0"))  # held meanwhile
    page = [msg("lobby", "bob", f"p{i}", f"{i + 50}-0") for i in range(CATCHUP_PAGE)]
    shown, more = s.handle({**history_reply(ops[0], page), "complete": False,
                            "oldest": "50-0"})
    assert notices(shown) == [GAP] and shown[0].text == GAP  # before what is still held
    # the next page is asked after an id just shown; were it trimmed meanwhile, the gap
    # is the same one: said once
    shown, _ = s.handle({**history_reply(more[0], [msg("lobby", "bob", "end", "800-0")]),
                         "complete": False, "oldest": "300-0"})
    assert notices(shown) == [] and texts(shown) == ["end", "live"]
    # a complete catch-up after the next failover says nothing
    s.disconnected()
    ops = welcomed(s, resumed=True)
    shown, _ = s.handle(history_reply(ops[0], [msg("lobby", "bob", "new", "901-0")]))
    assert notices(shown) == [] and texts(shown) == ["new"]


def test_a_gap_the_node_found_in_its_own_repair_is_said() -> None:
    s = ClientState([A], "me")
    hist, _ = welcomed(s)
    s.handle(history_reply(hist, []))
    shown, ops = s.handle({"ev": "gap", "room": "lobby", "oldest": "5-0"})
    assert (notices(shown), ops) == ([GAP], [])
    assert plain(shown[0]).endswith(GAP)
    shown, _ = s.handle({"ev": "gap", "room": "lobby"})  # another repair, another gap
    assert notices(shown) == [GAP]


def test_pending_messages_resent_only_if_the_catch_up_does_not_show_them() -> None:
    s = ClientState([A, B], "me")
    hist, _ = welcomed(s)
    s.handle(history_reply(hist, []))
    _, ops1 = s.command("got through")
    s.command("lost in flight")
    assert len(s.pending) == 2 and ops1[0]["op"] == "say"
    s.disconnected()  # node died before either ack arrived
    ops = welcomed(s, resumed=True)
    shown, resend = s.handle(history_reply(ops[0], [msg("lobby", "me", "got through", "5-0")]))
    assert texts(shown) == ["got through"] and shown[0].own
    assert [o["text"] for o in resend] == ["lost in flight"]
    s.handle({"ev": "ack", "ref": resend[0]["ref"], "id": "6-0"})
    assert not s.pending


def caught_up(state: ClientState) -> None:
    """Welcomed, with the lobby's first catch-up answered (empty)."""
    hist, _ = welcomed(state)
    state.handle(history_reply(hist, []))


def ack(op: dict[str, Any], id_: str) -> dict[str, Any]:
    return {"ev": "ack", "ref": op["ref"], "id": id_}


@pytest.mark.parametrize("echo_first", [True, False])
def test_ack_and_echo_in_either_order_settle_a_message(echo_first: bool) -> None:
    s = ClientState([A], "me")
    caught_up(s)
    (say,) = s.command("hello")[1]
    echo, acked = msg("lobby", "me", "hello", "5-0"), ack(say, "5-0")
    for ev in ([echo, acked] if echo_first else [acked, echo]):
        s.handle(ev)
    assert not s.pending
    assert not s._echoed and not s._acked  # nothing left waiting for its other half


def test_an_echo_whose_ack_was_lost_is_not_said_again_after_a_failover() -> None:
    """The echo came, the node died before the ack: the message got through, and the
    catch-up (after the echo's id) cannot show it again — the echo alone must tell."""
    s = ClientState([A, B], "me")
    caught_up(s)
    (say,) = s.command("made it")[1]
    s.command("lost")
    s.handle(msg("lobby", "me", "made it", "5-0"))
    s.disconnected()
    ops = welcomed(s, resumed=True)
    assert ops[0]["after"] == "5-0"
    _, resend = s.handle(history_reply(ops[0], []))
    assert [o["text"] for o in resend] == ["lost"]
    assert say["ref"] not in s.pending and len(s.pending) == 1


def test_the_echo_of_an_acked_message_is_not_taken_for_a_pending_one() -> None:
    s = ClientState([A, B], "me")
    caught_up(s)
    (first,) = s.command("same words")[1]
    s.handle(ack(first, "5-0"))  # acked; its echo has not come yet
    s.command("same words")  # said again, then the node dies
    s.disconnected()
    ops = welcomed(s, resumed=True)
    _, resend = s.handle(history_reply(ops[0], [msg("lobby", "me", "same words", "5-0")]))
    assert [o["text"] for o in resend] == ["same words"]  # the second one, said again


def test_pending_text_is_compared_as_the_node_relays_it() -> None:
    s = ClientState([A, B], "me")
    caught_up(s)
    s.command("  spaced    out\tline ")
    s.disconnected()
    ops = welcomed(s, resumed=True)
    _, resend = s.handle(history_reply(ops[0], [msg("lobby", "me", "spaced out line", "5-0")]))
    assert resend == [] and not s.pending


def test_a_fresh_join_does_not_mistake_old_lines_for_delivery() -> None:
    s = ClientState([A], "bot")
    s.command("deploy done")  # said before the first welcome (scripts do this)
    hist, _ = welcomed(s)
    _, resend = s.handle(history_reply(hist, [msg("lobby", "bot", "deploy done", "1-0")]))
    assert [o["text"] for o in resend] == ["deploy done"]


def test_commands_become_ops() -> None:
    s = ClientState([A], "me")
    hist, _ = welcomed(s)
    assert s.command("held back")[1] == []  # said while the room catches up: sent after
    _, resend = s.handle(history_reply(hist, []))
    assert [o["text"] for o in resend] == ["held back"]
    assert s.command("//slash")[1][0]["text"] == "/slash"
    assert s.command("/me waves")[1][0]["op"] == "me"
    pm = s.command("/msg bob hi  there")[1][0]
    assert (pm["op"], pm["to"], pm["text"]) == ("msg", "bob", "hi  there")
    assert s.command("/join #Dev")[1][0]["room"] == "dev"
    assert s.command("/who")[1][0]["room"] == "lobby"
    assert s.command("/history 5")[1][0]["limit"] == 5
    assert s.command("/quit bye")[1] == [{"op": "quit", "reason": "bye"}] and s.quitting
    for bad in ("/msg bob", "/join", "/nick", "/history x", "/nope"):
        shown, ops = s.command(bad)
        assert shown[0].kind == "error" and not ops


def test_the_room_listing_comes_a_page_at_a_time() -> None:
    s = ClientState([A], "me")
    welcomed(s)
    _, ops = s.command("/rooms dev")
    assert ops == [{"op": "rooms", "after": "dev", "ref": ops[0]["ref"]}]
    shown, _ = s.handle({"ev": "rooms", "rooms": [{"room": "lobby", "members": 2}],
                         "more": True, "ref": ops[0]["ref"]})
    assert [x.text for x in shown] == ["1 rooms: lobby (2)", "more rooms follow: /rooms lobby"]
    shown, _ = s.handle({"ev": "rooms", "rooms": [], "ref": "x"})
    assert [x.text for x in shown] == ["0 rooms: "]


def test_topics_are_shown() -> None:
    s = ClientState([A], "me")
    welcomed(s)
    shown, ops = s.handle({"ev": "topic", "room": "lobby", "nick": "ann", "text": "ship it"})
    assert [x.text for x in shown] == ["ann set the topic of lobby: ship it"] and not ops
    shown, _ = s.handle({"ev": "topic", "room": "lobby", "nick": "ann", "text": ""})
    assert [x.text for x in shown] == ["ann cleared the topic of lobby"]


def test_membership_follows_events() -> None:
    s = ClientState([A], "me")
    welcomed(s)
    s.handle({"ev": "who", "room": "lobby", "nicks": ["me", "bob"], "ref": "w"})
    s.handle({"ev": "join", "room": "lobby", "nick": "eve"})
    s.handle({"ev": "nick", "old": "bob", "new": "robert"})
    s.handle({"ev": "quit", "nick": "eve"})
    assert s.members["lobby"] == {"me", "robert"}
    _, ops = s.handle({"ev": "join", "room": "dev", "nick": "me"})
    assert s.room == "dev" and ops[0]["op"] == "history"
    s.handle({"ev": "part", "room": "dev", "nick": "me"})
    assert s.room == "lobby"
    s.handle({"ev": "nick", "old": "me", "new": "me2"})
    assert s.nick == "me2"
    # after a gap in its node's subscription the node sends the members unasked: the
    # list is corrected silently
    shown, ops = s.handle({"ev": "who", "room": "lobby", "nicks": ["me2", "zed"]})
    assert (shown, ops) == ([], []) and s.members["lobby"] == {"me2", "zed"}


def test_wire_text_is_neutralised_again() -> None:
    s = ClientState([A], "me")
    hist, _ = welcomed(s)
    s.handle(history_reply(hist, []))
    shown, _ = s.handle(msg("lobby", "b\x1b[31mob", "hi\x1b]0;pwned\x07\u202e", "1-0"))
    assert "\x1b" not in shown[0].text and "\u202e" not in shown[0].text
    assert "\x1b" not in shown[0].nick  # type: ignore[operator]
    assert safe("emoji 👩\u200d💻\tok") == "emoji 👩\u200d💻\tok"
    assert plain(shown[0]).startswith("[lobby] b")


# ------------------------------------------------------------- account and operator commands


def test_account_and_operator_commands_go_out_as_their_json_ops() -> None:
    s = ClientState([A], "me")
    welcomed(s)
    cases = {
        "/register  long enough pw": {"op": "register", "password": "long enough pw"},
        "/password new-one-here": {"op": "password", "password": "new-one-here"},
        "/login alice her password": {"op": "login", "nick": "alice",
                                      "password": "her password"},
        "/oper s3cret": {"op": "oper", "secret": "s3cret"},
        "/kick bob go away": {"op": "kick", "nick": "bob", "reason": "go away"},
        "/ban bob 2h spam links": {"op": "ban", "target": "bob", "duration": 7200,
                                   "reason": "spam links"},
        "/ban 10.0.0.1": {"op": "ban", "target": "10.0.0.1"},
        "/unban bob": {"op": "unban", "target": "bob"},
        "/mute bob 30s": {"op": "mute", "nick": "bob", "duration": 30},
        "/unmute bob": {"op": "unmute", "nick": "bob"},
        "/BANS": {"op": "bans"},
    }
    for line, want in cases.items():
        shown, ops = s.command(line)
        assert shown == [] and len(ops) == 1, line
        op = dict(ops[0])
        assert op.pop("ref"), line
        assert op == want, line


def test_bad_arguments_are_caught_before_sending() -> None:
    s = ClientState([A], "me")
    welcomed(s)
    for line in ("/register", "/ban bob 0m", "/kick", "/login alice", "/bans all",
                 "/nick a b", "/join a b", "/who a b", "/part a b", "/history ５"):
        shown, ops = s.command(line)
        assert ops == [] and [x.code for x in shown] == ["bad-args"], line
        assert shown[0].text.startswith("usage:") or "duration" in shown[0].text, line


def test_an_accepted_password_is_the_one_used_after_a_failover() -> None:
    s = ClientState([A], "me", password="old-password")
    welcomed(s)
    _, [refused] = s.command("/password another-one")
    s.handle({"ev": "error", "code": "auth-busy", "text": "busy", "ref": refused["ref"]})
    assert s.password == "old-password"  # refused: nothing changes
    _, [accepted] = s.command("/password the-new-one")
    s.handle({"ev": "ack", "ref": accepted["ref"]})
    assert s.password == "the-new-one"
    s.token = None  # a failover that cannot resume logs in afresh
    assert s.hello()["password"] == "the-new-one"


def test_the_bans_listing_is_shown() -> None:
    s = ClientState([A], "me")
    welcomed(s)
    shown, _ = s.handle({"ev": "bans", "ref": "x", "bans": [
        {"kind": "ip-ban", "target": "10.0.0.1", "by": "op", "expires_in": 60.0},
        {"kind": "mute", "target": "bob\x1b[2J", "by": "op", "expires_in": 5.5,
         "reason": "hush"}]})
    assert [x.text for x in shown] == [
        "2 bans or mutes in force", "ip-ban 10.0.0.1: 60.0 s left, by op",
        f"mute {safe('bob' + chr(27) + '[2J')}: 5.5 s left, by op: hush"]


_words = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), max_codepoint=0x2FF),
                 min_size=1, max_size=12)
_duration = st.sampled_from(["", " 30s", " 10m", " 2h", " 7d"])
_lines = st.one_of(
    st.builds(lambda w: f"/register {w}", _words),
    st.builds(lambda w: f"/password {w}", _words),
    st.builds(lambda n, w: f"/login {n} {w}", _words, _words),
    st.builds(lambda w: f"/oper {w}", _words),
    st.builds(lambda n, r: f"/kick {n} {r}".rstrip(), _words, st.text(max_size=20)),
    st.builds(lambda n, d, r: f"/ban {n}{d} {r}".rstrip(), _words, _duration,
              st.text(max_size=20)),
    st.builds(lambda n, d: f"/mute {n}{d}", _words, _duration),
    st.builds(lambda n: f"/unban {n}", _words),
    st.builds(lambda n: f"/unmute {n}", _words),
    st.just("/bans"),
)


@settings(max_examples=300)
@given(line=_lines)
def test_the_op_sent_means_what_the_line_means_to_a_node(line: str) -> None:
    """Whatever the client sends for a typed account or operator command, a node reading
    that JSON op understands the same command as a node reading the typed line."""
    s = ClientState([A], "me")
    welcomed(s)
    try:
        typed = TEXT.parse(line, True)
    except ProtocolError as exc:
        shown, ops = s.command(line)
        assert ops == [] and [x.code for x in shown] == [exc.code]
        return
    shown, [op] = s.command(line)
    assert shown == []
    sent = JSON.parse(json.dumps(op), True)
    assert sent == replace(typed, ref=op["ref"])  # type: ignore[type-var]


_said = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1,
                max_size=20)
_typed = st.one_of(
    _lines,
    st.builds(lambda n, t: f"/msg {n} {t}", _words, _said),
    st.builds(lambda n: f"/nick {n}", _words),
    st.builds(lambda r: f"/who {r}", _words), st.just("/who"),
    st.just("/rooms"),
    st.builds(lambda n: f"/history {n}", st.integers(1, 10**6)), st.just("/history"),
    st.builds(lambda r: f"/part {r}", _words), st.just("/part"),
    st.builds(lambda r: f"/join #{r}", _words), st.just("/join lobby"),
    st.builds(lambda t: f"/QUIT {t}", _said), st.just("/q"),
    st.builds(lambda t: f"/me {t}", _said),
    st.just("/help"), st.just("/ping"), st.just("/auth t0ken"),
    st.text(max_size=30).map(lambda t: f"/{t}"),  # anything at all after the slash
)


@settings(max_examples=500)
@given(line=_typed)
def test_every_typed_command_goes_out_as_what_it_means_to_a_node(line: str) -> None:
    """A /command the client sends is the command a node in text mode reads from the line,
    with the client's current room where the line names none."""
    s = ClientState([A], "me")
    hist, _ = welcomed(s)
    s.handle(history_reply(hist, []))
    shown, ops = s.command(line)
    word = command_word(line.rstrip("\r\n"))
    if word is None:  # "//...": said
        assert [op["op"] for op in ops] == ["say"]
        return
    if f"/{word}" not in COMMANDS:  # /ping, /auth and the unknown ones
        assert ops == [] and [x.code for x in shown] == ["unknown-command"]
        return
    try:
        typed: Any = TEXT.parse(line.rstrip("\r\n"), True)
    except ProtocolError as exc:
        assert ops == [] and [x.code for x in shown] == [exc.code]
        return
    if isinstance(typed, Help) or (isinstance(typed, Join) and typed.room == "lobby"):
        assert ops == [] and [x.kind for x in shown] == ["notice"]
        return
    [op] = ops
    sent = JSON.parse(json.dumps(op), True)
    if isinstance(typed, Join):
        typed = replace(typed, room=typed.room.lstrip("#").lower())
    if isinstance(typed, Me | Part | Who | History) and typed.room is None:
        typed = replace(typed, room="lobby")
    assert sent == replace(typed, ref=op.get("ref"))
    assert s.quitting == isinstance(typed, Quit)


def test_typed_commands_follow_the_nodes_grammar() -> None:
    s = ClientState([A], "me")
    welcomed(s)
    # what the node's text mode refuses, the client refuses with the node's words
    assert s.command("/nick a b")[0][0].text == USAGE["nick"]
    assert s.command("/history ５")[0][0].text == USAGE["history"]
    # and reads what it reads
    assert s.command("/join\tdev")[1][0]["room"] == "dev"
    assert s.command("/MSG\tbob  hi")[1][0]["text"] == "hi"
    for line in ("/ping", "/auth secret", "/frob x"):
        shown, ops = s.command(line)
        assert ops == [] and shown[0].code == "unknown-command", line
