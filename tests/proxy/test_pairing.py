"""The pairing buffer is synchronous: these tests need no event loop and no clock."""

from __future__ import annotations

import hashlib

from contract.outcomes import Outcome
from proxy.pairing import CompletedPair, PairingBuffer, Side


def _buffer(max_pairs: int = 10, keep: bool = False) -> tuple[PairingBuffer, list[CompletedPair]]:
    out: list[CompletedPair] = []
    return PairingBuffer(
        max_pairs, out.append, candidate_deadline_ms=250, keep_request_body=keep
    ), out


def test_pair_is_emitted_when_both_sides_are_in_either_order() -> None:
    buf, out = _buffer()
    buf.open("a", ts=1.0, route="/r", body=b"x", deadline=10)
    buf.open("b", ts=1.0, route="/r", body=b"y", deadline=10)
    buf.set_candidate("a", Side(Outcome.OK, status=200))
    buf.set_prod("b", Side(Outcome.OK, status=200))
    assert out == []
    buf.set_prod("a", Side(Outcome.OK, status=201))
    buf.set_candidate("b", Side(Outcome.ERROR, error="reset"))
    assert [p.request_id for p in out] == ["a", "b"]
    assert out[0].prod.status == 201 and out[1].candidate.outcome is Outcome.ERROR
    assert out[0].request_sha256 == hashlib.sha256(b"x").hexdigest()
    assert out[0].request_body is None and len(buf) == 0


def test_missing_candidate_becomes_a_censored_timeout_at_the_deadline() -> None:
    buf, out = _buffer()
    buf.open("a", ts=1.0, route="/r", body=b"", deadline=5)
    buf.open("b", ts=1.0, route="/r", body=b"", deadline=7)
    buf.set_prod("a", Side(Outcome.OK, status=200))
    assert buf.expire(4.9) == 0
    assert buf.expire(5.0) == 1
    (pair,) = out
    assert pair.candidate.outcome is Outcome.TIMEOUT and pair.candidate.latency_ms == 250
    assert len(buf) == 1
    buf.set_candidate("a", Side(Outcome.OK))  # a late half is ignored, not re-emitted
    assert len(out) == 1


def test_buffer_is_bounded_and_counts_refusals() -> None:
    buf, _ = _buffer(max_pairs=2)
    assert buf.open("a", ts=0, route="/", body=b"", deadline=1)
    assert buf.open("b", ts=0, route="/", body=b"", deadline=1)
    assert not buf.open("c", ts=0, route="/", body=b"", deadline=1)
    assert buf.dropped_full == 1 and len(buf) == 2


def test_drain_emits_everything_and_keeps_bodies_when_asked() -> None:
    buf, out = _buffer(keep=True)
    buf.open("a", ts=0, route="/", body=b"{}", deadline=100, candidate=Side(Outcome.SHED))
    assert buf.drain() == 1
    assert out[0].candidate.outcome is Outcome.SHED and out[0].prod.outcome is Outcome.TIMEOUT
    assert out[0].request_body == b"{}"


def test_missing_production_is_censored_at_the_time_waited() -> None:
    """A production side still missing when the pair is emitted waited at least this long."""
    buf, out = _buffer()
    buf.open("a", ts=1.0, route="/r", body=b"", deadline=31.0, now=0.0)
    buf.open("b", ts=1.0, route="/r", body=b"", deadline=32.0, now=1.0)
    buf.set_candidate("a", Side(Outcome.OK, status=200, latency_ms=3.0))
    assert buf.expire(31.0) == 1
    assert out[0].prod.outcome is Outcome.TIMEOUT and out[0].prod.latency_ms == 31_000.0
    assert buf.drain(now=2.5) == 1  # shutdown: waited 1.5 s so far, not the full deadline
    assert out[1].prod.outcome is Outcome.TIMEOUT and out[1].prod.latency_ms == 1_500.0


def test_a_production_body_about_to_wait_is_told_and_may_end_the_wait() -> None:
    """``on_wait`` hears of production's body only when it would wait for the candidate's side
    (body present, candidate missing); a hook that sets the candidate's side (the tee giving the
    call up) gets the pair emitted at once, with production's side whole."""
    buf, out = _buffer()
    told: list[tuple[str, int]] = []

    def wait(rid: str, size: int) -> None:
        told.append((rid, size))
        if rid == "shed":
            buf.set_candidate(rid, Side(Outcome.SHED, error="budget"))

    buf.on_wait = wait
    for rid in ("kept", "shed", "late", "empty"):
        buf.open(rid, ts=1.0, route="/r", body=b"", deadline=10)
    buf.set_candidate("late", Side(Outcome.OK, status=200, body=b"[2]"))
    buf.set_prod("late", Side(Outcome.OK, status=200, body=b"[1]"))  # nothing waits: not told
    buf.set_prod("empty", Side(Outcome.OK, status=204))  # no body: not told
    buf.set_prod("kept", Side(Outcome.OK, status=200, body=b"[1, 2]"))
    buf.set_prod("shed", Side(Outcome.OK, status=200, body=b"[3]"))
    assert told == [("kept", 6), ("shed", 3)]
    assert [p.request_id for p in out] == ["late", "shed"]
    assert out[1].candidate.outcome is Outcome.SHED and out[1].prod.body == b"[3]"
    assert "kept" in buf and "empty" in buf
