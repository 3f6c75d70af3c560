"""Tests for node.names: nickname rules and folding, room names, text sanitising."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import BadArguments, BadNick, BadRoom, EmptyText
from node.names import (
    ID_PART_MAX,
    MAX_REASON,
    check_message_id,
    check_nick,
    check_room,
    clean_reason,
    clean_text,
    fold_nick,
)

BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# --------------------------------------------------------------------------- nicknames


@pytest.mark.parametrize(
    "nick",
    [
        "alice",
        "Bob_42",
        "a",
        "x" * 32,
        "[away]{x}|^`-_",
        "Ωμέγα",  # Greek
        "Дмитрий",  # Cyrillic
        "李小龙",  # Han
        "مريم",  # Arabic
        "नमस्ते",  # Devanagari, with combining marks
        "e\u0301",  # e + combining acute accent
        "٣٤",  # Arabic-Indic digits (Nd)
    ],
)
def test_valid_nicks(nick: str) -> None:
    assert check_nick(nick) == nick


def test_nick_is_stripped() -> None:
    assert check_nick("  alice \t") == "alice"


@pytest.mark.parametrize(
    "nick",
    [
        "",
        "   ",
        "al ice",
        "al\tice",
        "x" * 33,
        "\u0301e",  # combining mark first
        "bob\x07",  # BEL
        "bob\x1b[31m",  # ESC
        "bo\x85b",  # C1 control (NEL)
        "bob\u200b",  # zero-width space (Cf)
        "bob\u202e",  # bidi override (Cf)
        "bob\u200d",  # zero-width joiner (Cf)
        "😀",  # emoji (So)
        "bob😀",
        "a.b",
        "a@b",
        "a:b",
        "#room",
        "/nick",
        "bob\u3164",  # Hangul filler: an invisible letter
        "bob\ufe0f",  # variation selector: an invisible mark
        "bob\u3000x",  # ideographic space
    ],
)
def test_invalid_nicks(nick: str) -> None:
    with pytest.raises(BadNick):
        check_nick(nick)


def test_bad_nick_has_code() -> None:
    with pytest.raises(BadNick) as info:
        check_nick("no spaces")
    assert info.value.code == "bad-nick"


def test_fold_equivalence() -> None:
    fullwidth = "\uff21\uff2c\uff29\uff23\uff25"  # full-width ALICE
    assert check_nick(fullwidth) == fullwidth
    assert fold_nick("Alice") == fold_nick("ALICE") == fold_nick(fullwidth) == "alice"


def test_fold_distinguishes() -> None:
    assert fold_nick("alice") != fold_nick("alicf")
    assert fold_nick("Straße") == fold_nick("STRASSE")


def test_fold_normalises_composition() -> None:
    assert fold_nick("e\u0301") == fold_nick("\u00e9")


@given(st.text(max_size=40))
def test_check_nick_only_raises_bad_nick_and_revalidates(raw: str) -> None:
    try:
        nick = check_nick(raw)
    except BadNick:
        return
    assert check_nick(nick) == nick
    assert 1 <= len(nick) <= 32
    symbols = [ch for ch in nick if unicodedata.category(ch).startswith(("C", "Z", "S"))]
    assert set(symbols) <= set("^`|")  # the only symbols allowed (^ ` are Sk, | is Sm); no C* or Z*


@given(st.text(max_size=40))
def test_fold_is_idempotent(raw: str) -> None:
    assert fold_nick(fold_nick(raw)) == fold_nick(raw)


# --------------------------------------------------------------------------- rooms


@pytest.mark.parametrize(
    ("raw", "room"),
    [
        ("lobby", "lobby"),
        ("#Lobby", "lobby"),
        ("  #dev-ops_2 ", "dev-ops_2"),
        ("0day", "0day"),
        ("r" * 32, "r" * 32),
        ("#" + "R" * 32, "r" * 32),
    ],
)
def test_valid_rooms(raw: str, room: str) -> None:
    assert check_room(raw) == room


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "#",
        "##lobby",
        "a:*",
        "[x]",
        "*",
        "r" * 33,
        "_lobby",
        "-lobby",
        "lob by",
        "# lobby",
        "café",
        "лобби",
        "\u212a",  # Kelvin sign: str.lower() would make it "k"
        "lob\nby",
        "lobby.x",
    ],
)
def test_invalid_rooms(raw: str) -> None:
    with pytest.raises(BadRoom):
        check_room(raw)


@given(st.text(max_size=40))
def test_check_room_only_raises_bad_room(raw: str) -> None:
    try:
        room = check_room(raw)
    except BadRoom:
        return
    assert room.isascii()
    assert check_room(room) == room


# --------------------------------------------------------------------------- message ids


def test_message_ids_within_redis_range() -> None:
    assert check_message_id("1700000000000-3") == "1700000000000-3"
    assert check_message_id("0-0") == "0-0"
    assert check_message_id("007-01") == "7-1"
    top = str(ID_PART_MAX)
    assert check_message_id(f"{top}-{top}") == f"{top}-{top}"
    for bad in ["99999999999999999999-0", f"0-{ID_PART_MAX + 1}", "1", "1-", "-1", "1-2-3",
                "a-1", " 1-1", "1-1\n", "\u0661-1", "1" * 21 + "-0", "+1-0", ""]:
        with pytest.raises(BadArguments) as info:
            check_message_id(bad)
        assert info.value.code == "bad-args" and "'after'" in info.value.text, bad


@given(st.integers(0, 10**20 - 1), st.integers(0, 10**20 - 1))
def test_a_message_id_is_accepted_exactly_when_redis_would(ms: int, seq: int) -> None:
    raw = f"{ms}-{seq}"
    if ms <= ID_PART_MAX and seq <= ID_PART_MAX:
        assert check_message_id(raw) == raw
    else:
        with pytest.raises(BadArguments):
            check_message_id(raw)


@given(st.text(max_size=50))
def test_any_text_is_an_id_or_bad_args(raw: str) -> None:
    try:
        canonical = check_message_id(raw)
    except BadArguments:
        return
    ms, seq = canonical.split("-")
    assert int(ms) <= ID_PART_MAX and int(seq) <= ID_PART_MAX
    assert check_message_id(canonical) == canonical


# --------------------------------------------------------------------------- text


def test_plain_text_unchanged() -> None:
    assert clean_text("hello, world") == "hello, world"
    assert clean_text("  padded  ") == "padded"


def test_ansi_colour_removed_entirely() -> None:
    assert clean_text("\x1b[1;31mred\x1b[0m text") == "red text"


def test_other_csi_sequences_removed() -> None:
    assert clean_text("a\x1b[2Jb\x1b[?25lc\x1b[10;20Hd") == "abcd"


def test_8bit_csi_removed() -> None:
    assert clean_text("a\x9b31mb") == "ab"


def test_osc_title_removed() -> None:
    assert clean_text("\x1b]0;pwned\x07hi") == "hi"
    assert clean_text("\x1b]0;pwned\x1b\\hi") == "hi"
    assert clean_text("\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\") == "link"


def test_unterminated_osc_removed_to_end() -> None:
    assert clean_text("hi \x1b]0;title with no end") == "hi"


def test_two_char_escapes_removed() -> None:
    assert clean_text("a\x1bcb\x1b7c\x1b(Bd") == "abcd"


def test_c0_c1_del_removed() -> None:
    assert clean_text("a\x00b\x07c\x08d\x7fe\x85f\x80g\x9ah") == "abcdefgh"


def test_8bit_string_introducers_removed_with_their_string() -> None:
    assert clean_text("a\x9d0;title\x9cb") == "ab"
    assert clean_text("a\x9fapc string") == "a"


def test_cr_lf_and_separators_removed() -> None:
    assert clean_text("one\rtwo\nthree\u2028four\u2029five") == "onetwothreefourfive"


def test_bidi_controls_removed() -> None:
    assert clean_text("abc\u202egpj.exe") == "abcgpj.exe"
    for ch in BIDI:
        assert clean_text(f"x{ch}y") == "xy"


def test_invisible_format_characters_removed() -> None:
    assert clean_text("a\u200bb\ufeffc\u2060d\u00ade") == "abcde"


def test_every_run_of_blanks_becomes_one_space() -> None:
    assert clean_text("a\tb") == "a b"
    assert clean_text("a  \t  b\t\tc") == "a b c"
    assert clean_text("a\u3000\u3000b\u00a0c\u2000\u200a\u202fd") == "a b c d"
    # drawn as nothing but taking room: the Hangul fillers and the braille blank
    assert clean_text("a\u3164\u3164b\u2800\u2800\u2800c\uffa0d\u115f\u1160e") == "a b c d e"
    # zero-width characters do not split a run (they would chain runs invisibly)
    assert clean_text("a" + " \u200d" * 100 + "b") == "a b"
    assert clean_text("a \u0301\u0301 \ufe0f b") == "a b"
    # ... but stay where they belong to the character before the blank
    assert clean_text("\u2764\ufe0f  \U0001f468\u200d\U0001f469 \u00e9\u0301") == (
        "\u2764\ufe0f \U0001f468\u200d\U0001f469 \u00e9\u0301")
    # blanks left next to each other once control characters are gone are one run too
    assert clean_text("a \x00\x1b[0m \u202e b") == "a b"


def test_a_wall_of_spaces_cannot_fake_a_line_of_its_own() -> None:
    assert clean_text("x" + " " * 200 + "* bob quit") == "x * bob quit"
    assert clean_text("x" + "\t" * 40 + "* bob quit") == "x * bob quit"
    assert clean_text("x" + "\u3000" * 100 + "* bob quit") == "x * bob quit"


def test_every_unicode_space_separator_is_a_blank() -> None:
    for cp in range(0x110000):
        ch = chr(cp)
        if unicodedata.category(ch) == "Zs":
            assert clean_text(f"a{ch}{ch}b") == "a b", hex(cp)


def test_only_blanks_is_empty_text() -> None:
    for raw in ("\u3164", "\u2800\u2800", "\u3000 \u00a0", " \u200d "):
        with pytest.raises(EmptyText):
            clean_text(raw)


def test_reasons_are_cleaned_and_cut() -> None:
    assert clean_reason(None) is None
    assert clean_reason("") is None
    assert clean_reason(" \x1b[0m ") is None
    assert clean_reason("  spaced   out\t") == "spaced out"
    cut = clean_reason("x" * (MAX_REASON - 1) + "   y")
    assert cut == "x" * (MAX_REASON - 1)  # never ends in a blank once cut
    assert len(clean_reason("y" * 1000) or "") == MAX_REASON


def test_zwj_emoji_kept() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_text(family) == family
    heart = "\u2764\ufe0f"
    assert clean_text(heart) == heart


def test_non_latin_kept() -> None:
    assert clean_text("  Привет, 世界 ") == "Привет, 世界"


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "\x00\x01\x1b", "\x1b[31m\x1b[0m", "\u202e\u200b", "\r\n\t", "\u200d", " \u0301 "],
)
def test_nothing_visible_is_empty_text(raw: str) -> None:
    with pytest.raises(EmptyText) as info:
        clean_text(raw)
    assert info.value.code == "empty-text"


_noisy_text = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from(["\x1b", "[", "]", "\x07", "\\", "\x9b", "\x9d", "\x9c", "\t", "\n"]),
        st.sampled_from(sorted(BIDI)),
    ),
    max_size=60,
)


@given(_noisy_text)
def test_clean_text_output_is_safe(raw: str) -> None:
    try:
        text = clean_text(raw)
    except EmptyText:
        return
    for ch in text:
        assert ch == "\t" or unicodedata.category(ch) != "Cc"
        assert ch not in BIDI
        assert ch not in "\u2028\u2029"
    assert text == text.strip()
    assert clean_text(text) == text


_BLANKISH = ["\t", " ", "\u00a0", "\u1680", "\u2000", "\u2007", "\u200a", "\u202f",
             "\u205f", "\u3000", "\u3164", "\u115f", "\u2800", "\u200d", "\u0301",
             "\ufe0f", "\u200b", "\r", "\n", "\x00"]
_DRAWN_BLANK = "\u115f\u1160\u3164\uffa0\u2800"


@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from(_BLANKISH)), max_size=80))
def test_clean_text_never_leaves_two_blanks_in_a_row(raw: str) -> None:
    try:
        text = clean_text(raw)
    except EmptyText:
        return
    for ch in text:
        assert unicodedata.category(ch) not in ("Cc", "Zl", "Zp")
        assert ch == " " or not (ch.isspace() or ch in _DRAWN_BLANK)  # one kind of blank
    for a, b in itertools.pairwise(text):
        assert not (a == " " == b), repr(text)
        assert not (a == " " and (b == "\u200d" or unicodedata.category(b) in ("Mn", "Me")))
    assert clean_text(text) == text


# --------------------------------------------------------------------------- confusables


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("evan", "\u0435van"),  # Cyrillic е
        ("paypal", "\u0440\u0430\u0443\u0440\u0430l"),  # Cyrillic р а у р а
        ("Alice", "\u0391lice"),  # Greek capital alpha
        ("scope", "\u0455\u0441\u043e\u0440\u0435"),  # all Cyrillic
        ("bob", "b0b"),  # TR39: digit zero is O
        ("userl", "user1"),  # TR39: digit one is l
        ("arnold", "amold"),  # TR39: m is rn
        ("x|y", "xly"),  # vertical line is l
        ("evan", "\U0001d41e\U0001d42f\U0001d41a\U0001d427"),  # mathematical bold
    ],
)
def test_look_alikes_fold_to_one_key(a: str, b: str) -> None:
    assert check_nick(a) == a and check_nick(b) == b
    assert fold_nick(a) == fold_nick(b)


@pytest.mark.parametrize(("a", "b"), [("alice", "alicf"), ("bob", "rob"), ("evan", "ivan"),
                                      ("東京", "京東"), ("n1", "n2")])
def test_different_names_stay_different(a: str, b: str) -> None:
    assert fold_nick(a) != fold_nick(b)


def test_keys_of_plain_lowercase_names_are_unchanged() -> None:
    """Lease keys of ordinary names are what they were before confusable folding."""
    for name in ("alice", "bob", "evan", "x_y", "[away]", "a-b", "zed99"):
        assert fold_nick(name) == name


_NICK_CHARS = st.sampled_from(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-[]{}|^`"
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
    "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"
    "àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝ"
    "ａｂｃＡＢＣ０１２")
_NICKS = st.text(_NICK_CHARS, min_size=1, max_size=32)


@given(_NICKS)
def test_fold_is_case_insensitive(nick: str) -> None:
    assert fold_nick(nick.upper()) == fold_nick(nick.lower()) == fold_nick(nick)


@given(_NICKS)
def test_fold_of_a_nick_is_a_non_empty_fixed_point(nick: str) -> None:
    key = fold_nick(nick)
    assert key and fold_nick(key) == key


@given(st.text(min_size=1, max_size=32))
def test_fold_of_any_valid_nick_is_non_empty(raw: str) -> None:
    try:
        nick = check_nick(raw)
    except BadNick:
        return
    assert fold_nick(nick)  # an empty key would read as "not registered"


def test_the_skeleton_library_still_makes_the_keys_we_shipped() -> None:
    """disarm bumps KEY_SCHEMA_VERSION whenever its keys move.  Keys name Redis leases, so
    an upgrade that moves them must be planned (all nodes of a cluster fold alike): see
    docs/SECURITY.md before changing the number here."""
    import disarm

    assert disarm.KEY_SCHEMA_VERSION == 10


_CYRILLIC_TWINS = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440",
                   "c": "\u0441", "x": "\u0445", "y": "\u0443", "i": "\u0456",
                   "j": "\u0458", "s": "\u0455"}


@given(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=32), st.data())
def test_swapping_letters_for_cyrillic_twins_keeps_the_key(name: str,
                                                            data: st.DataObject) -> None:
    """Any Latin name with any of its letters replaced by their Cyrillic look-alikes (and
    its case changed) folds to the same key: such a name is taken while the other is."""
    swap = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    twin = "".join(_CYRILLIC_TWINS.get(ch, ch) if flip else ch
                   for ch, flip in zip(name, swap, strict=True))
    upper = data.draw(st.booleans())
    assert fold_nick(twin.upper() if upper else twin) == fold_nick(name)
