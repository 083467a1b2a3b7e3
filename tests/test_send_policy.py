"""The backfill guard: only a run of the current day may send for real."""

from __future__ import annotations

from datetime import date

import pytest

from winback.delivery import send_policy

TODAY = date(2026, 11, 23)


def test_dry_run_stays_a_dry_run():
    decision = send_policy.decide("dry_run", date(2026, 11, 22), "scheduled", today=TODAY)
    assert decision.mode == "dry_run"


@pytest.mark.parametrize("run_type", ["scheduled", "manual"])
def test_the_current_day_sends_live(run_type):
    for logical_date in (date(2026, 11, 22), TODAY):
        decision = send_policy.decide("live", logical_date, run_type, today=TODAY)
        assert decision.mode == "live", decision.reason


def test_a_backfill_never_sends_even_for_yesterday():
    decision = send_policy.decide("live", date(2026, 11, 22), "backfill", today=TODAY)
    assert decision.mode == "dry_run"
    assert "backfill" in decision.reason


@pytest.mark.parametrize("run_type", ["scheduled", "manual", "asset_triggered"])
def test_a_past_day_never_sends(run_type):
    decision = send_policy.decide("live", date(2026, 11, 20), run_type, today=TODAY)
    assert decision.mode == "dry_run"
    assert "3 days in the past" in decision.reason


def test_the_explicit_param_allows_a_past_send():
    for run_type in ("backfill", "manual"):
        decision = send_policy.decide(
            "live", date(2026, 10, 1), run_type, allow_past_sends=True, today=TODAY
        )
        assert decision.mode == "live"


def test_a_future_day_never_sends():
    decision = send_policy.decide("live", date(2026, 11, 25), "manual", today=TODAY)
    assert decision.mode == "dry_run"


def test_unknown_modes_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="send mode"):
        send_policy.decide("loud", TODAY, "manual", today=TODAY)
    monkeypatch.setenv(send_policy.SEND_MODE_ENV, "yes")
    with pytest.raises(ValueError, match="WINBACK_SEND_MODE"):
        send_policy.default_send_mode()
    monkeypatch.setenv(send_policy.SEND_MODE_ENV, "live")
    assert send_policy.default_send_mode() == "live"
    monkeypatch.delenv(send_policy.SEND_MODE_ENV)
    assert send_policy.default_send_mode() == "dry_run"
