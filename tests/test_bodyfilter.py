"""fwproxy.bodyfilter: the body-filter chain fed by hand, sans-IO (no transports, no reactor)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fwproxy.bodyfilter import (
    CONSUMER,
    FILTER,
    BodyChain,
    FlowGate,
    LengthChanged,
    drop_length,
)
from fwproxy.chain import FilterError
from fwproxy.interfaces import IBodyTransform
from fwproxy.message import Response


@implementer(IBodyTransform)
class Upper:
    """Upper-cases; keeps the length."""

    keeps_length = True

    def data(self, chunk: bytes) -> bytes:
        return chunk.upper()

    def end(self) -> bytes:
        return b""


@implementer(IBodyTransform)
class Frame:
    """Wraps each chunk in brackets and adds a final piece: changes the length."""

    keeps_length = False

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def data(self, chunk: bytes) -> list[bytes]:
        self.seen.append(chunk)
        return [b"[", chunk, b"]"]

    def end(self) -> bytes:
        return b"<end>"


@implementer(IBodyTransform)
class Hold:
    """Holds everything back until the end (a whole-body scanner would, up to a bound)."""

    keeps_length = True

    def __init__(self) -> None:
        self.held: list[bytes] = []

    def data(self, chunk: bytes) -> list[bytes]:
        self.held.append(chunk)
        return []

    def end(self) -> list[bytes]:
        return self.held


@implementer(IBodyTransform)
class Later:
    """Answers every call with a Deferred the test fires."""

    keeps_length = False

    def __init__(self) -> None:
        self.pending: list[tuple[bytes | None, Deferred[Any]]] = []

    def data(self, chunk: bytes) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((chunk, d))
        return d

    def end(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((None, d))
        return d


def result_of(value: Any) -> Any:
    assert not isinstance(value, Deferred)
    return value


def test_transforms_provide_the_interface() -> None:
    for t in (Upper(), Frame(), Hold(), Later()):
        assert verifyObject(IBodyTransform, t)


def test_pieces_go_through_the_transforms_in_order() -> None:
    frame = Frame()
    c = BodyChain([Upper(), frame])
    assert not c.keeps_length
    assert result_of(c.data(b"ab")) == [b"[", b"AB", b"]"]
    assert frame.seen == [b"AB"]
    # each piece the first passes on is fed to the second on its own
    c2 = BodyChain([Frame(), Upper()])
    assert result_of(c2.data(b"x")) == [b"[", b"X", b"]"]
    assert result_of(c2.end()) == [b"<END>"]


def test_end_flushes_each_stage_into_the_next() -> None:
    hold, frame = Hold(), Frame()
    c = BodyChain([hold, frame])
    assert result_of(c.data(b"one")) == []
    assert result_of(c.data(b"two")) == []
    assert frame.seen == []
    assert result_of(c.end()) == [b"[", b"one", b"]", b"[", b"two", b"]", b"<end>"]


def test_empty_pieces_are_dropped() -> None:
    @implementer(IBodyTransform)
    class Empties:
        keeps_length = True

        def data(self, chunk: bytes) -> tuple[bytes, ...]:
            return (b"", chunk, b"")

        def end(self) -> bytes:
            return b""

    assert result_of(BodyChain([Empties()]).data(b"x")) == [b"x"]


def test_a_response_ends_the_run() -> None:
    block = Response.text(403, "no")

    @implementer(IBodyTransform)
    class Block:
        keeps_length = True

        def data(self, chunk: bytes) -> Response | bytes:
            return block if b"secret" in chunk else chunk

        def end(self) -> bytes:
            return b""

    frame = Frame()
    c = BodyChain([Block(), frame])
    assert result_of(c.data(b"fine")) == [b"[", b"fine", b"]"]
    assert result_of(c.data(b"a secret")) is block
    assert frame.seen == [b"fine"]


def test_a_deferred_resumes_the_rest_of_the_run() -> None:
    later, frame = Later(), Frame()
    c = BodyChain([later, frame])
    d = c.data(b"abc")
    assert isinstance(d, Deferred)
    got: list[Any] = []
    d.addCallback(got.append)
    [(chunk, pending)] = later.pending
    assert chunk == b"abc" and frame.seen == []
    pending.callback([b"a", b"bc"])
    assert got == [[b"[", b"a", b"]", b"[", b"bc", b"]"]]
    e = c.end()
    assert isinstance(e, Deferred)
    e.addCallback(got.append)
    later.pending[-1][1].callback(b"tail")
    assert got[-1] == [b"[", b"tail", b"]", b"<end>"]


def test_a_deferred_mid_stage_finishes_that_stage_first() -> None:
    # the first stage passes on two pieces; the second answers the first piece later
    later = Later()
    c = BodyChain([Frame(), later])
    d = c.data(b"x")
    assert isinstance(d, Deferred)
    got: list[Any] = []
    d.addCallback(got.append)
    assert [p for p, _ in later.pending] == [b"["]
    later.pending[0][1].callback(b"1")
    assert [p for p, _ in later.pending] == [b"[", b"x"]
    later.pending[1][1].callback(b"2")
    later.pending[2][1].callback(b"3")
    assert got == [[b"1", b"2", b"3"]]


def test_a_raising_transform_is_a_named_filter_error() -> None:
    @implementer(IBodyTransform)
    class Broken:
        keeps_length = True

        def data(self, chunk: bytes) -> bytes:
            raise RuntimeError("boom")

        def end(self) -> bytes:
            return b""

    with pytest.raises(FilterError) as e:
        BodyChain([Broken()]).data(b"x")
    assert "Broken" in e.value.filter and e.value.hook == "data"


def test_a_failing_deferred_is_a_named_filter_error() -> None:
    @implementer(IBodyTransform)
    class Fails:
        keeps_length = True

        def data(self, chunk: bytes) -> Deferred[Any]:
            return fail(RuntimeError("later boom"))

        def end(self) -> bytes:
            return b""

    d = BodyChain([Fails()]).data(b"x")
    assert isinstance(d, Deferred)
    failures: list[Any] = []
    d.addErrback(failures.append)
    [f] = failures
    assert f.check(FilterError) and "Fails" in f.value.filter


@pytest.mark.parametrize("answer", [42, [b"ok", "text"], "text"])
def test_a_wrong_answer_is_a_filter_error(answer: Any) -> None:
    @implementer(IBodyTransform)
    class Wrong:
        keeps_length = False

        def data(self, chunk: bytes) -> Any:
            return answer

        def end(self) -> bytes:
            return b""

    with pytest.raises(FilterError, match="expected bytes"):
        BodyChain([Wrong()]).data(b"x")


def test_a_transform_that_breaks_its_length_promise_is_caught() -> None:
    @implementer(IBodyTransform)
    class Liar:
        keeps_length = True

        def data(self, chunk: bytes) -> bytes:
            return chunk + b"!"

        def end(self) -> bytes:
            return b""

    with pytest.raises(FilterError) as e:
        BodyChain([Liar()]).data(b"x")
    assert e.value.failure.check(LengthChanged)

    short = BodyChain([Hold()])
    short.transforms[0].end = lambda: []  # type: ignore[method-assign]
    short.data(b"abc")
    with pytest.raises(FilterError):
        short.end()


def test_drop_length() -> None:
    fields = [(b"Host", b"a"), (b"content-length", b"5"), (b"X", b"y")]
    assert drop_length(fields) == [(b"Host", b"a"), (b"X", b"y")]


def test_flow_gate_pauses_for_either_reason() -> None:
    t = StringTransport()
    gate = FlowGate(t)
    gate.hold(FILTER)
    assert t.producerState == "paused"
    gate.resumeProducing()  # the consumer drained: the filter still holds it
    assert t.producerState == "paused"
    gate.pauseProducing()
    gate.release(FILTER)
    assert t.producerState == "paused" and gate.held == CONSUMER
    gate.resumeProducing()
    assert t.producerState == "producing"
    gate.stopProducing()
    assert t.producerState == "stopped"


# -- any chunking gives the same output -------------------------------------------------------


@implementer(IBodyTransform)
class Swap:
    """Replaces ``ab`` by ``X`` across chunk boundaries, holding one byte back."""

    keeps_length = False

    def __init__(self) -> None:
        self.tail = b""

    def data(self, chunk: bytes) -> bytes:
        buf = (self.tail + chunk).replace(b"ab", b"X")
        if buf.endswith(b"a"):
            buf, self.tail = buf[:-1], b"a"
        else:
            self.tail = b""
        return buf

    def end(self) -> bytes:
        return self.tail


def splits(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def run_all(chain: BodyChain, chunks: list[bytes]) -> bytes:
    out: list[bytes] = []
    for c in chunks:
        out.extend(result_of(chain.data(c)))
    out.extend(result_of(chain.end()))
    return b"".join(out)


bodies = st.lists(st.sampled_from([b"a", b"b", b"x", b"ab"]), max_size=80).map(b"".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=400), max_size=20)


@given(bodies, cut_lists)
def test_any_chunking_gives_the_same_output(body: bytes, cuts: list[int]) -> None:
    def chain() -> BodyChain:
        return BodyChain([Swap(), Upper(), Hold()])

    whole = run_all(chain(), [body] if body else [])
    assert whole == body.replace(b"ab", b"X").upper()
    assert run_all(chain(), splits(body, cuts)) == whole


@given(bodies, cut_lists)
def test_chunk_boundaries_only_move_the_framing(body: bytes, cuts: list[int]) -> None:
    out = run_all(BodyChain([Swap(), Frame()]), splits(body, cuts))
    assert out.endswith(b"<end>")
    assert out[: -len(b"<end>")].replace(b"[", b"").replace(b"]", b"") == body.replace(b"ab", b"X")
