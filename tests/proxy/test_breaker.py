"""The breaker's state machine and the tee control around it, with a fake clock (no sockets)."""

from __future__ import annotations

import pytest

from proxy.breaker import Breaker, BreakerConfig, BreakerState
from proxy.control import ControlError, TeeControl, check_candidate_url, check_sample_rate
from proxy.metrics import ProxyStats
from proxy.pairing import PairingBuffer
from proxy.settings import ProxySettings
from proxy.tee import Tee
from proxy.tee_rules import TeeRules
from proxy.upstream import CandidateClient

CFG = BreakerConfig(
    window_s=10.0, min_calls=10, threshold=0.5, probe_interval_s=2.0, probe_successes=3
)


def _state(b: Breaker) -> BreakerState:
    """Read afresh each time (mypy would otherwise keep the first narrowing)."""
    return b.state


class Counters:
    """Cumulative succeeded/failed counters, as the tee keeps them."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0

    def add(self, ok: int = 0, failed: int = 0) -> tuple[int, int]:
        self.ok += ok
        self.failed += failed
        return self.ok, self.failed


def test_stays_closed_below_min_calls_even_if_every_call_fails() -> None:
    b, c = Breaker(CFG), Counters()
    assert not b.observe(0.0, *c.add())
    assert not b.observe(1.0, *c.add(failed=9))
    assert _state(b) is BreakerState.CLOSED
    assert b.failure_share() is None


def test_trips_when_the_failure_share_passes_the_threshold() -> None:
    b, c = Breaker(CFG), Counters()
    b.observe(0.0, *c.add())
    assert not b.observe(1.0, *c.add(ok=5, failed=5))  # exactly 0.5: not above
    assert _state(b) is BreakerState.CLOSED
    assert b.observe(2.0, *c.add(failed=1))  # 6 of 11
    assert _state(b) is BreakerState.OPEN
    assert b.trips == 1
    assert "6 of 11" in b.reason
    assert not b.observe(3.0, *c.add(failed=100))  # already open: no second trip


def test_failures_older_than_the_window_do_not_count() -> None:
    b, c = Breaker(CFG), Counters()
    b.observe(0.0, *c.add())
    b.observe(1.0, *c.add(failed=8))  # 8 failures, below min_calls
    b.observe(5.0, *c.add())
    b.observe(11.5, *c.add())  # the window (10 s) slides past them
    # 5 of 10 is not above the threshold; with the 8 old failures it would be 13 of 18.
    assert not b.observe(12.0, *c.add(ok=5, failed=5))
    assert _state(b) is BreakerState.CLOSED
    assert b.failure_share() == pytest.approx(0.5)


def _tripped() -> tuple[Breaker, Counters]:
    b, c = Breaker(CFG), Counters()
    b.observe(0.0, *c.add())
    assert b.observe(1.0, *c.add(failed=10))
    return b, c


def test_open_probes_once_per_interval() -> None:
    b, _ = _tripped()
    assert not b.want_probe(1.5)  # the first probe waits one interval after the trip
    assert b.want_probe(3.0)
    assert not b.want_probe(3.1)  # at most one per interval
    assert not b.want_probe(4.9)
    assert b.want_probe(5.0)


def test_closes_after_probe_successes_in_a_row_and_a_failure_restarts_the_streak() -> None:
    b, _ = _tripped()
    assert not b.probe_result(3.0, ok=True)
    assert not b.probe_result(5.0, ok=True)
    assert not b.probe_result(7.0, ok=False)  # streak broken
    assert b.streak == 0
    assert not b.probe_result(9.0, ok=True)
    assert not b.probe_result(11.0, ok=True)
    assert _state(b) is BreakerState.OPEN
    assert b.probe_result(13.0, ok=True)
    assert _state(b) is BreakerState.CLOSED
    assert b.reason == ""
    assert not b.want_probe(100.0)  # closed: no probes


def test_closing_forgets_the_window_so_old_failures_never_trip_it_again() -> None:
    b, c = _tripped()
    for t in (3.0, 5.0, 7.0):
        b.probe_result(t, ok=True)
    assert _state(b) is BreakerState.CLOSED
    # The 10 failures before the trip are inside a 10 s window at t=8, but were forgotten.
    assert not b.observe(8.0, *c.add(ok=1))
    assert not b.observe(8.5, *c.add(ok=9, failed=1))
    assert _state(b) is BreakerState.CLOSED
    assert b.failure_share() == pytest.approx(1 / 10)


def test_probe_results_while_closed_change_nothing() -> None:
    b = Breaker(CFG)
    assert not b.probe_result(1.0, ok=False)
    assert not b.probe_result(2.0, ok=True)
    assert _state(b) is BreakerState.CLOSED and b.streak == 0


def test_reset_closes_an_open_breaker() -> None:
    b, _ = _tripped()
    b.reset(4.0)
    assert _state(b) is BreakerState.CLOSED
    assert b.view()["state"] == "closed"
    assert b.trips == 1  # the count of trips survives


def test_trips_again_after_recovering_if_the_candidate_fails_again() -> None:
    b, c = _tripped()
    for t in (3.0, 5.0, 7.0):
        b.probe_result(t, ok=True)
    b.observe(8.0, *c.add())
    assert b.observe(9.0, *c.add(ok=2, failed=9))
    assert b.trips == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window_s", 0.0),
        ("probe_interval_s", -1.0),
        ("min_calls", 0),
        ("probe_successes", 0),
        ("threshold", 1.0),
        ("threshold", -0.1),
    ],
)
def test_bad_config_is_refused(field: str, value: float) -> None:
    kw: dict[str, float] = {
        "window_s": 10.0,
        "min_calls": 10,
        "threshold": 0.5,
        "probe_interval_s": 2.0,
        "probe_successes": 3,
        field: value,
    }
    with pytest.raises(ValueError, match=field.split("_")[0]):
        BreakerConfig(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 0.05, 1, 1.0])
def test_sample_rate_accepts_numbers_within_0_and_1(value: float) -> None:
    assert check_sample_rate(value) == float(value)


@pytest.mark.parametrize("value", [True, "0.5", None, -0.01, 1.01, float("nan"), float("inf"), [1]])
def test_sample_rate_refuses_anything_else_naming_the_field(value: object) -> None:
    with pytest.raises(ControlError) as info:
        check_sample_rate(value)
    assert info.value.field == "sample_rate"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8001", "http://127.0.0.1:8001"),
        ("http://candidate:9000/", "http://candidate:9000"),
        ("http://[::1]:8001", "http://[::1]:8001"),
    ],
)
def test_candidate_url_is_http_host_port(value: str, expected: str) -> None:
    assert check_candidate_url(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "https://127.0.0.1:8001",
        "http://127.0.0.1",  # no port
        "http://127.0.0.1:8001/v2",  # a path
        "http://u:p@127.0.0.1:8001",
        "http://127.0.0.1:8001?x=1",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:80 01",
        "ftp://h:1",
        "127.0.0.1:8001",
        "",
        5,
        None,
    ],
)
def test_candidate_url_refuses_anything_else_naming_the_field(value: object) -> None:
    with pytest.raises(ControlError) as info:
        check_candidate_url(value)
    assert info.value.field == "candidate"


# --- the control object around it: operator and breaker on one tee (fake clock, no sockets) -----


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _control(breaker: bool = True) -> tuple[TeeControl, Tee, TeeRules, ProxyStats, FakeClock]:
    settings = ProxySettings(
        prod="http://127.0.0.1:1",
        candidate="http://127.0.0.1:2",
        breaker=breaker,
        breaker_window_s=10.0,
        breaker_min_calls=10,
        breaker_threshold=0.5,
        breaker_probe_interval_s=2.0,
        breaker_probe_successes=2,
    )
    stats = ProxyStats()
    tee = Tee(
        client=CandidateClient(settings.candidate, linger_s=0.0),
        deadline_s=0.25,
        max_inflight=8,
        max_body_bytes=1024,
        redact=(),
        forward_auth=False,
        pairing=PairingBuffer(max_pairs=8, on_emit=lambda _: None, candidate_deadline_ms=250.0),
        stats=stats,
        pair_ttl_s=1.0,
    )
    rules = TeeRules(["/v2/models/*/infer"], ["POST"], 1.0)
    clock = FakeClock()
    control = TeeControl(tee=tee, rules=rules, settings=settings, clock=clock, wall=lambda: 0.0)
    return control, tee, rules, stats, clock


def _submit(tee: Tee, rid: str = "r") -> bool:
    return tee.submit(rid, "POST", b"/v2/models/m/infer", "/v2/models/m/infer", [], b"{}")


def _trip(control: TeeControl, tee: Tee, clock: FakeClock) -> None:
    control.tick()
    clock.now += 1.0
    tee.failed += 10  # what ten timed-out calls leave behind
    control.tick()
    assert tee.paused and tee.pause_source == "breaker"


def test_the_breaker_pauses_the_tee_and_paused_requests_are_counted_apart() -> None:
    control, tee, _, stats, clock = _control()
    _trip(control, tee, clock)
    assert not _submit(tee)  # no pair, no call
    assert stats.tee_paused == {"operator": 0, "breaker": 1}
    assert stats.teed == 0 and sum(stats.outcomes.values()) == 0
    view = control.view()
    assert view["paused_by"] == "breaker"
    assert view["last_change"]["source"] == "breaker"
    assert "10 of 10" in view["last_change"]["reason"]
    assert control.changes == {"operator": 0, "breaker": 1}


def test_the_breaker_hands_out_one_probe_per_interval_and_closes_on_good_probes() -> None:
    control, tee, _, _, clock = _control()
    _trip(control, tee, clock)
    control.tick()
    assert tee.probes == 0  # the first probe waits one interval
    clock.now += 2.0
    control.tick()
    assert tee.probes == 1
    clock.now += 0.5
    control.tick()
    assert tee.probes == 1  # not cumulative
    assert tee.on_probe is not None
    tee.on_probe(True)
    assert tee.paused
    tee.on_probe(True)  # two in a row: closed
    assert not tee.paused and tee.probes == 0
    assert control.view()["last_change"]["what"] == "resume"
    assert control.changes == {"operator": 0, "breaker": 2}


def test_an_operator_pause_wins_over_the_breaker_and_a_resume_closes_it() -> None:
    control, tee, _, stats, clock = _control()
    _trip(control, tee, clock)
    control.pause("alice")
    assert tee.pause_source == "operator"
    clock.now += 10.0
    control.tick()
    assert tee.probes == 0  # no probes while an operator holds the tee
    assert not _submit(tee)
    assert stats.tee_paused["operator"] == 1
    control.resume("alice")
    assert not tee.paused
    assert control.breaker is not None and control.breaker.state is BreakerState.CLOSED
    assert control.view()["last_change"]["by"] == "alice"


def test_a_new_candidate_starts_the_breaker_afresh() -> None:
    control, tee, _, _, clock = _control()
    _trip(control, tee, clock)
    old = tee.client
    control.set_candidate("http://127.0.0.1:3", "bob")
    assert tee.client is not old and control.candidate == "http://127.0.0.1:3"
    assert not tee.paused
    assert tee.inflight == 0  # the old pool counts while it drains; it has nothing to drain


def test_the_sample_rate_changes_the_rules_in_place() -> None:
    control, _, rules, _, _ = _control(breaker=False)
    keys = [f"k{i}" for i in range(200)]
    control.set_sample_rate(0, "carol")
    assert not any(rules.sampled(k) for k in keys)
    control.set_sample_rate(0.25, "carol")
    picked = [k for k in keys if rules.sampled(k)]
    assert picked == [k for k in keys if TeeRules([], ["POST"], 0.25).sampled(k)]
    assert 20 < len(picked) < 80
    with pytest.raises(ControlError):
        control.set_sample_rate(1.5, "carol")
    assert rules.sample_rate == 0.25
    assert control.view()["breaker"] == {"enabled": False}
    control.tick()  # no breaker: a tick changes nothing
    assert control.changes == {"operator": 2, "breaker": 0}
