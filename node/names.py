"""Nicknames, room names and message text: validation, folding and sanitising.

Pure functions, no I/O.  The session calls them on whatever a codec parsed:

* :func:`check_nick` validates a nickname as typed; :func:`fold_nick` gives the key that
  decides whether two nicknames are "the same" (``Alice``, ``ALICE`` and the full-width
  form of ``ALICE``, U+FF21 U+FF2C U+FF29 U+FF23 U+FF25, are one name, and so are names
  that merely look alike: ``evan`` and ``evan`` with a Cyrillic U+0435 for the ``e``).
* :func:`check_room` turns ``#Lobby`` into ``lobby`` or refuses it.  Room names are plain
  ASCII so they can be used verbatim in Redis keys and channel names.
* :func:`check_message_id` checks a room message id a client sent (``after`` of
  ``history``) against what Redis accepts.
* :func:`clean_text` removes everything that could drive another user's terminal (escape
  sequences, control characters, bidi overrides) and collapses every run of blank space to
  one space before a message is relayed; :func:`clean_reason` does the same for the
  optional reason of a quit, kick, ban or mute, and shortens it.
* :func:`check_token` refuses a resume token that is not of the shape the cluster hands
  out, before it reaches Redis.
"""

from __future__ import annotations

import re
import unicodedata

from disarm import skeleton_key

from node.errors import BadArguments, BadNick, BadRoom, EmptyText

__all__ = [
    "ID_PART_MAX",
    "MAX_NICK",
    "MAX_REASON",
    "MAX_ROOM",
    "check_message_id",
    "check_nick",
    "check_room",
    "check_token",
    "clean_reason",
    "clean_text",
    "fold_nick",
]

MAX_NICK = 32
"""Longest nickname, in characters (code points)."""

MAX_ROOM = 32
"""Longest room name, in characters (ASCII)."""

MAX_REASON = 200
"""Longest reason of a quit, kick, ban or mute once cleaned, in characters; longer ones
are cut."""

_FOLD_ROUNDS = 4
"""Folding normally settles in one or two rounds; this bounds it whatever the data."""

# --------------------------------------------------------------------------- nicknames

_NICK_PUNCTUATION = frozenset("_-[]{}|^`")
_LETTER = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo"})
_MARK = frozenset({"Mn", "Mc", "Me"})

# Letters and marks that render as nothing (Unicode Default_Ignorable_Code_Point outside Cf):
# a nickname made of them, or padded with them, would impersonate another one.
_INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # half-width Hangul filler
    (0xE0100, 0xE01EF),  # variation selectors supplement
)


def _invisible(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _INVISIBLE_RANGES)


def check_nick(raw: str) -> str:
    """Return ``raw`` without surrounding whitespace if it is a valid nickname.

    A nickname is 1-32 characters, each a letter of any script, a decimal digit, one of
    ``_-[]{}|^``` or a combining mark (not first).  Whitespace, control and format
    characters, symbols (emoji included) and invisible fillers are refused.

    Raises:
        BadNick: the nickname breaks a rule.
    """
    nick = raw.strip()
    if not nick:
        raise BadNick("a nickname cannot be empty")
    if len(nick) > MAX_NICK:
        raise BadNick(f"a nickname is at most {MAX_NICK} characters")
    for index, ch in enumerate(nick):
        if ch in _NICK_PUNCTUATION:
            continue
        category = unicodedata.category(ch)
        if _invisible(ch):
            raise BadNick()
        if category in _LETTER or category == "Nd":
            continue
        if category in _MARK:
            if index == 0:
                raise BadNick("a nickname cannot start with a combining mark")
            continue
        raise BadNick()
    return nick


def _nfkc_casefold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def fold_nick(nick: str) -> str:
    """Return the uniqueness key of ``nick``: names that look alike get the same key.

    NFKC, casefold, NFKC again (``ALICE`` is ``alice``), then the Unicode TR39 confusable
    skeleton (``disarm.skeleton_key`` with TR39's digit classes, so ``evan`` with a Cyrillic
    U+0435 is ``evan``, ``b0b`` is ``bob``, ``user1`` is ``userl``) plus the one TR39 mapping
    disarm leaves out on purpose, ``m`` -> ``rn`` — repeated until nothing changes, so
    the key of a key is itself.  The key is never empty for a non-empty nickname.

    Two nicknames with the same key cannot be online at the same time.  The key names
    Redis keys (a nickname's lease): changing this function changes them, so every node
    of a cluster must fold alike (see docs/SECURITY.md).  The nickname shown is always
    the one typed.
    """
    key = _nfkc_casefold(nick)
    for _ in range(_FOLD_ROUNDS):
        nxt = _nfkc_casefold(skeleton_key(key, digit_policy="tr39").replace("m", "rn"))
        if nxt == key:
            break
        key = nxt
    return key or _nfkc_casefold(nick)


# --------------------------------------------------------------------------- rooms

_ROOM_RE = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{MAX_ROOM - 1}}}", re.ASCII)
# Lowercase ASCII letters only: str.lower() would turn the Kelvin sign into "k".
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def check_room(raw: str) -> str:
    """Return the bare, lowercase room name for ``raw`` (``" #Lobby "`` -> ``"lobby"``).

    Surrounding whitespace and one leading ``#`` are dropped and ASCII letters lowercased;
    what remains must be 1-32 of ``a-z 0-9 _ -``, starting with a letter or digit.

    Raises:
        BadRoom: the name breaks a rule.
    """
    name = raw.strip()
    if name.startswith("#"):
        name = name[1:]
    name = name.translate(_ASCII_LOWER)
    if _ROOM_RE.fullmatch(name) is None:
        raise BadRoom()
    return name


# --------------------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}/[0-9a-f]{32}", re.ASCII)


def check_token(raw: str) -> str:
    """Return ``raw`` if it has the shape of a resume token: ``<node id>/<32 hex>`` (a
    node id is 1-64 of ``A-Z a-z 0-9 . _ -``; the hex is lowercase), exactly as a
    ``welcome`` carries it.

    Raises:
        BadArguments: empty, or any other shape.
    """
    if _TOKEN_RE.fullmatch(raw) is None:
        raise BadArguments("'token' must be the resume token a welcome gave "
                           "(<node id>/<32 hex digits>)")
    return raw


# --------------------------------------------------------------------------- message ids

ID_PART_MAX = 2**64 - 1
"""Redis stream ids are two unsigned 64-bit numbers; Redis refuses anything larger."""
_MESSAGE_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)


def check_message_id(raw: str, field: str = "after") -> str:
    """Return the room message id ``raw`` (``MILLISECONDS-SEQUENCE``) in canonical form
    (no leading zeros): two decimal numbers from 0 to 18446744073709551615.

    Raises:
        BadArguments: ``raw`` is not such an id (the text names ``field``).
    """
    match = _MESSAGE_ID_RE.fullmatch(raw)
    if match is None or int(match[1]) > ID_PART_MAX or int(match[2]) > ID_PART_MAX:
        raise BadArguments(f"{field!r} must be a message id like 1700000000000-0: two "
                           f"numbers from 0 to {ID_PART_MAX} joined by '-'")
    return f"{int(match[1])}-{int(match[2])}"


# --------------------------------------------------------------------------- text

# Escape sequences are removed whole, so that no parameter bytes survive as text.  The
# 8-bit C1 introducers (U+009B CSI, U+009D OSC, ...) are treated like their 7-bit forms.
_ESCAPE_RE = re.compile(
    r"""
      (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?        # CSI ... final
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])                       # OSC, DCS, SOS, PM, APC
      .*? (?:\x07|\x1b\\|\x9c|\Z)                                   # ... up to BEL or ST
    | \x1b [\x20-\x2f]* [\x30-\x7e]?                                # other ESC sequences
    """,
    re.VERBOSE | re.DOTALL,
)

_BIDI = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_ZWJ = "\u200d"
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_INVISIBLE_CATEGORIES = frozenset({"Mn", "Me", "Cf"})
_MARK_CATEGORIES = frozenset({"Mn", "Me"})

# What shows as blank space once control characters are gone: TAB, the Unicode space
# separators (category Zs: U+0020, U+00A0, U+1680, U+2000-U+200A, U+202F,
# U+205F, U+3000) and the letters and symbols drawn as nothing that still take room (the
# Hangul fillers, the braille blank U+2800).
_OTHER_BLANKS = (
    "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u202f\u205f\u3000\u115f\u1160\u3164\uffa0\u2800"
)
_BLANKS = frozenset(" " + _OTHER_BLANKS)
_ASCII_BLANK_RUN = re.compile(r"[ \t]+")
# Non-ASCII text needs the slow pass only when it has a blank other than a lone space, or a
# space followed by a space or by a non-ASCII character (which may be a combining mark).
_BLANK_WORK = re.compile(f"[{_OTHER_BLANKS}]| [ \u0080-\U0010ffff]")


def _keep(ch: str) -> bool:
    if ch == "\t" or ch == _ZWJ:
        return True
    if ch in _BIDI:
        return False
    return unicodedata.category(ch) not in _DROP_CATEGORIES


def _visible(ch: str) -> bool:
    return not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES


def _collapse_blanks(text: str) -> str:
    """Every run of blank characters becomes one ``" "``.

    Zero-width characters (combining marks, the zero-width joiner) that follow a blank
    belong to its run: they would otherwise let runs of spaces be chained together
    invisibly (``" \\u200d \\u200d ..."``), and on a space they only draw a stray mark."""
    if text.isascii():
        if "  " in text or "\t" in text:
            return _ASCII_BLANK_RUN.sub(" ", text)
        return text
    if _BLANK_WORK.search(text) is None:
        return text
    out: list[str] = []
    in_run = False
    for ch in text:
        if ch in _BLANKS:
            if not in_run:
                out.append(" ")
                in_run = True
        elif in_run and (ch == _ZWJ or unicodedata.category(ch) in _MARK_CATEGORIES):
            continue
        else:
            in_run = False
            out.append(ch)
    return "".join(out)


def clean_text(raw: str) -> str:
    """Return ``raw`` with everything that could drive or fool a terminal removed.

    Removed: ANSI escape sequences (CSI, OSC and other ``ESC`` sequences, whole), every
    control character except TAB (C0, DEL and C1, ``\\r`` and ``\\n`` included), bidi
    controls, line/paragraph separators, lone surrogates and invisible format characters
    other than the zero-width joiner (emoji sequences need it).  Then every run of blank
    space — spaces, TABs, the other Unicode spaces (U+00A0, U+2000-U+200A, U+3000, ...),
    the Hangul fillers and the braille blank, with any zero-width character inside or
    right after it — becomes one ordinary space, so a message cannot push text to the
    start of the next terminal row with a wall of blanks; and surrounding space is
    stripped.  The result never holds two blanks in a row, and cleaning it again changes
    nothing.

    Raises:
        EmptyText: nothing visible remains.
    """
    if raw.isprintable():  # fast path: no C* or Z* characters other than the space
        text = raw
    else:
        text = _ESCAPE_RE.sub("", raw)
        text = "".join(ch for ch in text if _keep(ch))
    text = _collapse_blanks(text).strip()
    if not any(_visible(ch) for ch in text):
        raise EmptyText()
    return text


def clean_reason(raw: str | None) -> str | None:
    """The reason of a quit, kick, ban or mute as relayed: :func:`clean_text`, cut to
    :data:`MAX_REASON` characters; None when none was given or nothing visible is left."""
    if not raw:
        return None
    try:
        return clean_text(clean_text(raw)[:MAX_REASON])  # again: the cut may end in a blank
    except EmptyText:
        return None
