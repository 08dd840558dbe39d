"""Framing, socket paths and wire errors: ``protocol/framing.py``, ``protocol/paths.py``,
``protocol/errors.py``, checked against protocol-v1.md ("Transport and framing", "Error
codes")."""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import errors as errors_mod
from protocol.errors import (
    ERROR_CLASSES,
    ERROR_CODES,
    BadFrame,
    FrameTooLarge,
    PyrexisError,
    WireError,
    error_from_wire,
)
from protocol.framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAX_DEPTH,
    FrameDecoder,
    check_body,
    decode_body,
    encode_frame,
)
from protocol.paths import resolve_socket_path

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAMS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values msgpack carries both ways unchanged (lists, not tuples; str keys in maps).
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=12,
)
MESSAGES = st.dictionaries(st.text(max_size=20), VALUES, max_size=8)


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def nested_maps(levels: int) -> bytes:
    """A body of ``levels`` maps nested one in the other: {"k": {"k": ... nil}}."""
    return b"\x81\xa1k" * levels + b"\xc0"


# --- encode / decode ------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=MESSAGES)
def test_encode_then_decode_gives_the_message_back(message: dict[str, Any]) -> None:
    """Given any msgpack-able map with str keys, when it is framed and unframed, then the
    same map comes back, and the frame is a 4-byte big-endian length plus the body."""
    frame = encode_frame(message)
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - HEADER_SIZE == len(frame) - 4
    assert decode_body(frame[4:]) == message
    decoder = FrameDecoder()
    assert [decode_body(b) for b in decoder.feed(frame)] == [message]
    assert decoder.buffered == 0


def test_strings_are_str_and_bytes_are_bin() -> None:
    """Given a str and a bytes value, then they travel as msgpack str and bin and come back
    as str and bytes."""
    frame = encode_frame({"s": "é", "b": b"\xff\x00"})
    assert b"\xa2\xc3\xa9" in frame  # fixstr of the UTF-8 bytes
    assert b"\xc4\x02\xff\x00" in frame  # bin 8
    assert decode_body(frame[4:]) == {"s": "é", "b": b"\xff\x00"}


@STREAMS
@given(messages=st.lists(MESSAGES, max_size=5))
def test_decoder_fed_byte_by_byte_yields_exactly_the_frames(messages: list[dict[str, Any]]) -> None:
    """Given several frames, when the decoder is fed one byte at a time, then it yields
    exactly their bodies, in order, each as soon as its last byte arrives."""
    stream = b"".join(encode_frame(m) for m in messages)
    ends = []
    pos = 0
    for m in messages:
        pos += len(encode_frame(m))
        ends.append(pos)
    decoder = FrameDecoder()
    got: list[dict[str, Any]] = []
    for i in range(len(stream)):
        bodies = decoder.feed(stream[i : i + 1])
        if i + 1 in ends:
            assert len(bodies) == ends.count(i + 1) >= 1
        else:
            assert bodies == []
        got += [decode_body(b) for b in bodies]
    assert got == messages
    assert decoder.buffered == 0


@STREAMS
@given(messages=st.lists(MESSAGES, max_size=6), data=st.data())
def test_decoder_fed_random_chunks_yields_exactly_the_frames(
    messages: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Given several frames, when the stream is cut at random places (including empty
    chunks), then the decoder yields exactly the bodies in order, with only the incomplete
    tail buffered."""
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)], strict=True)]
    decoder = FrameDecoder()
    bodies: list[bytes] = []
    fed = 0
    for chunk in chunks:
        bodies += decoder.feed(chunk)
        fed += len(chunk)
        assert decoder.buffered == fed - sum(HEADER_SIZE + len(b) for b in bodies)
    assert [decode_body(b) for b in bodies] == messages
    assert decoder.buffered == 0


def test_an_empty_body_is_a_frame_of_its_own() -> None:
    """Given a zero-length frame between two others, then the decoder yields an empty body
    for it (which decode_body refuses) and stays in sync."""
    stream = encode_frame({"a": 1}) + frame_of(b"") + encode_frame({"b": 2})
    bodies = FrameDecoder().feed(stream)
    assert bodies[1] == b""
    assert decode_body(bodies[0]) == {"a": 1} and decode_body(bodies[2]) == {"b": 2}
    with pytest.raises(BadFrame):
        decode_body(bodies[1])


@pytest.mark.parametrize("max_frame", [0, 1, 10, 1000, DEFAULT_MAX_FRAME])
def test_a_length_above_max_frame_raises_before_the_body_arrives(max_frame: int) -> None:
    """Given a decoder with ``max_frame``, when only the 4-byte header of a frame of
    max_frame + 1 bytes has arrived, then FrameTooLarge is raised at once (with the limit in
    its details), without waiting for (or buffering) the body."""
    decoder = FrameDecoder(max_frame)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack(">I", max_frame + 1))
    assert info.value.code == "frame_too_large"
    assert info.value.details == {"max_frame": max_frame}


def test_a_huge_length_is_refused_from_a_split_header() -> None:
    """Given a header of 2^32-1 arriving in two halves, then the first half yields nothing
    and the second raises FrameTooLarge."""
    decoder = FrameDecoder(1024)
    header = struct.pack(">I", 2**32 - 1)
    assert decoder.feed(header[:2]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(header[2:])


def test_a_frame_of_exactly_max_frame_is_accepted() -> None:
    """Given max_frame N, then a frame of exactly N bytes passes."""
    body = msgpack.packb({"x": "a" * 90})
    decoder = FrameDecoder(len(body))
    assert decoder.feed(frame_of(body)) == [body]


def test_the_default_max_frame_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME == 16 * 1024 * 1024
    assert FrameDecoder().max_frame == DEFAULT_MAX_FRAME


# --- bad bodies ---------------------------------------------------------------------

BAD_BODIES = {
    "garbage (reserved byte 0xc1)": b"\xc1",
    "garbage (text)": b"hello, daemon",
    "empty": b"",
    "truncated map": b"\x82\xa1a\x01",
    "truncated string": msgpack.packb({"key": "value"})[:-2],
    "truncated huge str header": b"\x81\xa1k\xdb\xff\xff\xff\xff",
    "trailing bytes": msgpack.packb({"a": 1}) + b"\x00",
    "two maps": msgpack.packb({"a": 1}) + msgpack.packb({"b": 2}),
    "int": msgpack.packb(7),
    "list": msgpack.packb([1, 2]),
    "str": msgpack.packb("op"),
    "nil": msgpack.packb(None),
    "bin": msgpack.packb(b"\x81\xa1a\x01"),
    "float": msgpack.packb(1.5),
    "int key": msgpack.packb({1: "x"}),
    "bytes key": msgpack.packb({b"id": 1}, use_bin_type=True),
    "nil key": msgpack.packb({None: 1}),
    "mixed keys": msgpack.packb({"id": 1, 2: "x"}),
    "bool key": msgpack.packb({True: 1}),
    "float key": msgpack.packb({1.5: 1}),
    "list key": b"\x81\x91\x01\x01",  # {[1]: 1}
    "map key": b"\x81\x81\xa1a\x01\x01",  # {{"a": 1}: 1}
    "nested 1001 levels": nested_maps(1001),
    "nested 1025 levels": nested_maps(1025),
    "nested 5000 levels": nested_maps(5000),
    "nested lists 2000 levels": b"\x81\xa1k" + b"\x91" * 2000 + b"\xc0",
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_decode_body_raises_bad_frame_for_anything_but_one_map_with_str_keys(body: bytes) -> None:
    """Given a body that is not exactly one msgpack map with string keys, then decode_body
    raises BadFrame (code ``bad_frame``) -- never another exception, which would escape the
    server's ``except BadFrame`` and cost the client its connection."""
    with pytest.raises(BadFrame) as info:
        decode_body(body)
    assert info.value.code == "bad_frame"
    assert info.value.message


@FAST
@given(
    garbage=st.one_of(
        st.binary(max_size=64),
        # a one-entry map whose key is any msgpack value (str, int, nil, list, map, ...)
        st.tuples(VALUES, VALUES).map(lambda kv: b"\x81" + msgpack.packb(kv[0]) + msgpack.packb(kv[1])),
    )
)
def test_decode_body_on_random_bytes_returns_a_str_keyed_map_or_raises_bad_frame(garbage: bytes) -> None:
    """Given arbitrary bytes, or a map whose key is any msgpack value, then decode_body
    either returns a dict with str keys or raises BadFrame; nothing else escapes."""
    try:
        value = decode_body(garbage)
    except BadFrame:
        return
    assert isinstance(value, dict) and all(isinstance(k, str) for k in value)


def depth_of(value: Any) -> int:
    """Containers nested in ``value``, the value itself counting as level 1 (iterative:
    the values tested are deeper than Python's recursion limit allows)."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        todo.extend((child, level + 1) for child in children)
    return deepest


def test_nesting_up_to_the_limit_is_accepted_and_one_more_level_is_not() -> None:
    """Given maps nested exactly as deep as the limit, then the body decodes; one level
    more is bad_frame. Readers of the daemon default to MAX_DEPTH (1000); the daemon reads
    its clients with DEFAULT_MAX_DEPTH (100) unless --max-depth says otherwise."""
    assert (MAX_DEPTH, DEFAULT_MAX_DEPTH) == (1000, 100)
    for limit in (1, DEFAULT_MAX_DEPTH, MAX_DEPTH):
        assert depth_of(decode_body(nested_maps(limit), limit)) == limit
        with pytest.raises(BadFrame, match=f"deeper than {limit} levels"):
            decode_body(nested_maps(limit + 1), limit)
    # The default of decode_body is the most any reader accepts.
    assert depth_of(decode_body(nested_maps(MAX_DEPTH))) == MAX_DEPTH


BOMBS = {
    "array32 declaring 2^32-1 elements": b"\x81\xa1k\xdd\xff\xff\xff\xff",
    "map32 declaring 2^32-1 pairs": b"\x81\xa1k\xdf\xff\xff\xff\xff",
    "100 nested arrays declaring 65535 each": b"\x81\xa1k" + b"\xdc\xff\xff" * 99,
    "100 nested maps declaring 65535 each, padded": b"\x81\xa1k" + b"\xde\xff\xff\xa1k" * 98 + b"\xc0" * 200_000,
    "str32 declaring 4 GiB": b"\x81\xa1k\xdb\xff\xff\xff\xff" + b"x" * 100,
    "bin32 declaring 4 GiB": b"\x81\xa1k\xc6\xff\xff\xff\xff" + b"x" * 100,
    "ext32 declaring 4 GiB": b"\x81\xa1k\xc9\xff\xff\xff\xff\x01" + b"x" * 100,
    "a count one above what is left": b"\x81\xa1k\x93\x01\x02",
}


@pytest.mark.parametrize("body", list(BOMBS.values()), ids=list(BOMBS))
def test_a_declared_size_larger_than_the_body_is_refused_before_anything_is_unpacked(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a body whose headers declare more elements or bytes than it holds (a msgpack
    bomb: the unpacker would allocate the declared slots first), then decode_body raises
    BadFrame, and for a body longer than the depth limit msgpack's unpacker is never
    called. (A body no longer than the limit is left to msgpack, which refuses a count
    above the body's length before allocating: at most a few KiB for such a body.)"""
    with pytest.raises(BadFrame):
        decode_body(body, DEFAULT_MAX_DEPTH)

    def unpackb(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpackb must not see a body that failed the check")

    monkeypatch.setattr(msgpack, "unpackb", unpackb)
    with pytest.raises(BadFrame):
        decode_body(body, 4)


DEEP_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


@FAST
@given(value=DEEP_VALUES, limit=st.integers(1, 12))
def test_check_body_accepts_exactly_the_values_within_the_depth_limit(value: Any, limit: int) -> None:
    """Given any msgpack value and a depth limit, then check_body accepts its packed bytes
    exactly when the value nests at most ``limit`` containers deep, and decode_body of a
    map holding it gives the map back exactly when the map (one level more) fits."""
    body = msgpack.packb(value, use_bin_type=True)
    fits = max(depth_of(value), 0) <= limit
    try:
        check_body(body, limit)
    except BadFrame:
        assert not fits
    else:
        assert fits
    framed = msgpack.packb({"v": value}, use_bin_type=True)
    if depth_of(value) + 1 <= limit:
        assert decode_body(framed, limit) == {"v": value}
    else:
        with pytest.raises(BadFrame):
            decode_body(framed, limit)


@FAST
@given(value=DEEP_VALUES, cut=st.integers(0, 10_000), extra=st.binary(min_size=1, max_size=4))
def test_check_body_refuses_every_truncation_and_every_trailing_byte(value: Any, cut: int, extra: bytes) -> None:
    """Given a packed value, then every strict prefix of it is refused (truncated) and so
    is the value followed by anything: the walk ends exactly where the value does."""
    body = msgpack.packb(value, use_bin_type=True)
    with pytest.raises(BadFrame):
        check_body(body[: cut % len(body)])
    with pytest.raises(BadFrame):
        check_body(body + extra)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=200))
def test_check_body_and_msgpack_agree_on_random_bytes(garbage: bytes) -> None:
    """Given arbitrary bytes, then whatever check_body accepts msgpack unpacks completely
    (bar text that is not UTF-8 and unhashable keys, which decode_body also refuses), and
    whatever msgpack unpacks whole within the depth limit, check_body accepts."""
    try:
        check_body(garbage, DEFAULT_MAX_DEPTH)
        checked = True
    except BadFrame:
        checked = False
    try:
        value = msgpack.unpackb(garbage, raw=False, strict_map_key=False)
        unpacked = depth_of(value) <= DEFAULT_MAX_DEPTH
    except (ValueError, TypeError, msgpack.UnpackException):
        unpacked = False
        if checked:
            # Only content errors may fail after the walk: never a size or a structure.
            with pytest.raises((UnicodeDecodeError, TypeError, ValueError)):
                msgpack.unpackb(garbage, raw=False, strict_map_key=False)
            return
    assert checked == unpacked


def test_a_bad_body_leaves_the_decoder_in_sync() -> None:
    """Given a garbage frame between two good ones, then the decoder still splits them and
    the next frame decodes: the length prefix keeps the stream in sync."""
    stream = encode_frame({"id": 1}) + frame_of(b"\xc1\xc1\xc1") + encode_frame({"id": 2})
    bodies = FrameDecoder().feed(stream)
    assert len(bodies) == 3
    with pytest.raises(BadFrame):
        decode_body(bodies[1])
    assert decode_body(bodies[2]) == {"id": 2}


# --- socket path ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "env", "uid", "expected"),
    [
        ("/f.sock", {"PYREXIS_SOCKET": "/e.sock", "XDG_RUNTIME_DIR": "/x"}, 0, "/f.sock"),
        ("/f.sock", {}, 1000, "/f.sock"),
        (None, {"PYREXIS_SOCKET": "/e.sock", "XDG_RUNTIME_DIR": "/x"}, 0, "/e.sock"),
        (None, {"PYREXIS_SOCKET": "/e.sock"}, 1000, "/e.sock"),
        (None, {"XDG_RUNTIME_DIR": "/run/user/0"}, 0, "/run/pyrexis/pyrexisd.sock"),
        (None, {}, 0, "/run/pyrexis/pyrexisd.sock"),
        (None, {"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/pyrexis/pyrexisd.sock"),
        (None, {}, 1000, "/tmp/pyrexis-1000/pyrexisd.sock"),
        (None, {"XDG_RUNTIME_DIR": ""}, 1234, "/tmp/pyrexis-1234/pyrexisd.sock"),
        (None, {"PYREXIS_SOCKET": ""}, 1234, "/tmp/pyrexis-1234/pyrexisd.sock"),
        ("", {"PYREXIS_SOCKET": "/e.sock"}, 1234, "/e.sock"),
    ],
)
def test_socket_path_resolution_follows_the_contracts_order(
    flag: str | None, env: dict[str, str], uid: int, expected: str
) -> None:
    """Given a flag, an environment and a uid, then the socket path is, in order: the
    --socket flag, PYREXIS_SOCKET, /run/pyrexis/pyrexisd.sock for root,
    $XDG_RUNTIME_DIR/pyrexis/pyrexisd.sock, else /tmp/pyrexis-$UID/pyrexisd.sock."""
    assert resolve_socket_path(flag, env, uid) == expected


@FAST
@given(
    flag=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    env_sock=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    xdg=st.one_of(st.none(), st.text(min_size=1, max_size=20).map(lambda s: "/" + s)),
    uid=st.integers(0, 2**31),
)
def test_socket_path_resolution_for_any_inputs(
    flag: str | None, env_sock: str | None, xdg: str | None, uid: int
) -> None:
    """Given any combination of flag, env var, runtime dir and uid, then the first that
    applies wins, and the process's own environment is not consulted."""
    env: dict[str, str] = {}
    if env_sock is not None:
        env["PYREXIS_SOCKET"] = env_sock
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = xdg
    got = resolve_socket_path(flag, env, uid)
    if flag:
        assert got == flag
    elif env_sock:
        assert got == env_sock
    elif uid == 0:
        assert got == "/run/pyrexis/pyrexisd.sock"
    elif xdg:
        assert got == os.path.join(xdg, "pyrexis", "pyrexisd.sock")
    else:
        assert got == f"/tmp/pyrexis-{uid}/pyrexisd.sock"


def test_socket_path_ignores_the_process_environment_when_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given PYREXIS_SOCKET set in the process, when an explicit empty env is passed, then
    it is not used."""
    monkeypatch.setenv("PYREXIS_SOCKET", "/from/process.sock")
    assert resolve_socket_path(None, {}, 1000) == "/tmp/pyrexis-1000/pyrexisd.sock"
    assert resolve_socket_path(None, None, 1000) == "/from/process.sock"


# --- errors from the wire ---------------------------------------------------------------

CONTRACT_CODES = (
    "bad_frame", "frame_too_large", "invalid_request", "unknown_op", "unknown_task",
    "not_found", "conflict", "invalid_state", "unauthorized", "timeout", "overloaded",
    "shutting_down", "storage_error", "internal",
)


def test_every_contract_code_has_its_own_class() -> None:
    """Given the contract's 14 error codes, then ERROR_CODES is exactly them, each mapped to
    a distinct WireError subclass whose ``code`` is that code."""
    assert set(ERROR_CODES) == set(CONTRACT_CODES) and len(ERROR_CODES) == len(CONTRACT_CODES)
    assert len(set(ERROR_CLASSES.values())) == len(CONTRACT_CODES)
    for code, cls in ERROR_CLASSES.items():
        assert issubclass(cls, WireError) and issubclass(cls, PyrexisError) and cls.code == code
        assert getattr(errors_mod, cls.__name__) is cls


@pytest.mark.parametrize("code", CONTRACT_CODES)
@pytest.mark.parametrize("details", [None, {"status": "running"}, [1, "x"], 0])
def test_error_from_wire_maps_every_code_to_its_class(code: str, details: Any) -> None:
    """Given a failure frame's error map with a contract code, then error_from_wire gives
    that code's class, keeping message and details, and to_wire gives the map back."""
    wire: dict[str, Any] = {"code": code, "message": f"about {code}"}
    if details is not None:
        wire["details"] = details
    exc = error_from_wire(wire)
    assert type(exc) is ERROR_CLASSES[code]
    assert exc.code == code
    assert exc.message == f"about {code}" and str(exc) == f"about {code}"
    assert exc.details == details
    assert exc.to_wire() == wire


@settings(max_examples=60, deadline=None)
@given(
    code=st.text(max_size=20).filter(lambda c: c not in CONTRACT_CODES),
    message=st.text(max_size=30),
    details=VALUES,
)
def test_an_unknown_code_gives_a_generic_error_that_keeps_everything(
    code: str, message: str, details: Any
) -> None:
    """Given a code newer than this client, then error_from_wire gives a plain
    WireError (no subclass) carrying that code, the message and the details."""
    exc = error_from_wire({"code": code, "message": message, "details": details})
    assert type(exc) is WireError
    assert exc.code == code
    assert exc.message == message
    assert exc.details == details
    # the class-wide default is untouched by one instance's code
    assert WireError.code == "internal"


@pytest.mark.parametrize("error", [None, "boom", 3, ["bad_frame"]])
def test_a_malformed_error_map_still_gives_a_pyrexis_error(error: Any) -> None:
    """Given a failure frame whose ``error`` is not a map, then error_from_wire still
    returns a WireError (internal) rather than raising."""
    exc = error_from_wire(error)
    assert isinstance(exc, WireError) and exc.code == "internal"


def test_a_missing_message_becomes_empty() -> None:
    exc = error_from_wire({"code": "not_found"})
    assert type(exc) is ERROR_CLASSES["not_found"] and exc.message == "" and exc.details is None
