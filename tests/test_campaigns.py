"""Campaign files: validation that names the file, the field and the problem."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from winback import cli
from winback.campaigns import campaign_files as campaigns

VALID = """
id: {id}
description: test campaign
starts_on: 2026-01-01
ends_on: 2026-12-31
audience:
  rule: orders_count > 3 and days_since_last_order > 120
  rfm_segments: [At risk]
channels: [email, sms]
holdout:
  share: 0.2
caps:
  coupon_cooldown_days: 7
steps:
  - id: first_touch
    channel: email
    subject: Hello
    body: Hi {{{{ first_name }}}}
  - id: text
    channel: sms
    wait_days: 2
    when: not_opened
    body: Hi {{{{ first_name }}}}, {{{{ coupon_code }}}}
    incentive:
      coupon: {{discount_percent: 10}}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_shipped_campaigns_are_valid_and_cover_the_six_scenarios():
    loaded = campaigns.load_campaigns()
    assert {c.id for c in loaded} == {
        "we_miss_you",
        "abandoned_cart",
        "popup_non_subscribers",
        "sms_reactivation",
        "personal_timing",
        "loyalty_points",
    }
    problems, warnings = campaigns.validate_folder()
    assert problems == [] and warnings == []


def test_a_valid_file_loads(tmp_path):
    campaign = campaigns.load_campaign(write(tmp_path, "spring", VALID.format(id="spring")))
    assert campaign.holdout_share == 0.2
    assert campaign.steps[1].when.outcome == "not_opened"
    assert campaign.is_active(date(2026, 6, 1)) and not campaign.is_active(date(2027, 1, 1))
    assert campaign.audience.expression() == (
        "(orders_count > 3 and days_since_last_order > 120) and rfm_segment in ('At risk')"
    )


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (("share: 0.2", "share: 1.5"), "holdout.share", "less than 1"),
        (("[At risk]", "[Sleepy]"), "audience.rfm_segments", "unknown RFM segment"),
        (("channel: email", "channel: fax"), "steps.0.channel", "'email', 'sms' or 'popup'"),
        (("    subject: Hello\n", ""), "steps.0", "needs a subject"),
        (("ends_on: 2026-12-31", "ends_on: 2025-12-31"), "(campaign)", "before starts_on"),
        (("description: test campaign", "description: x\nsql: drop table"), "sql", "not permitted"),
        (("channels: [email, sms]", "channels: [email]"), "(campaign)", "not in channels"),
        (("when: not_opened", "when: maybe"), "steps.1.when.outcome", "'not_opened'"),
        (("wait_days: 2", "wait_days: -1"), "steps.1.wait_days", "greater than or equal to 0"),
        (("{discount_percent: 10}", "{valid_days: 3}"), "steps.1.incentive.coupon", "exactly one"),
        (("orders_count > 3", "orders_count > 3; drop table x"), "audience.rule", "invalid rule"),
        (("orders_count > 3", "no_such_column > 3"), "audience.rule", "invalid rule"),
        (("Hi {{ first_name }}\n", "Hi {{ password }}\n"), "steps.0.body", "password"),
        (("coupon_cooldown_days: 7", "coupon_cooldown_days: 0"), "caps.coupon_cooldown_days", ""),
    ],
)
def test_errors_name_the_file_the_field_and_the_problem(tmp_path, change, field, problem):
    text = VALID.format(id="broken").replace(*change)
    assert text != VALID.format(id="broken"), "the change must apply"
    with pytest.raises(campaigns.CampaignError) as error:
        campaigns.load_campaign(write(tmp_path, "broken", text))
    message = str(error.value)
    assert message.startswith("broken.yaml: ")
    assert f"{field}:" in message and problem in message


def test_a_branch_on_an_unknown_or_later_step_is_refused(tmp_path):
    text = VALID.format(id="broken").replace(
        "when: not_opened", "when: {outcome: opened, step: nowhere}"
    )
    with pytest.raises(campaigns.CampaignError, match="'nowhere' is not an earlier step"):
        campaigns.load_campaign(write(tmp_path, "broken", text))


def test_an_sms_too_long_once_rendered_fails_validation(tmp_path):
    long_body = "Hi {{ first_name }}, " + "x" * 150
    text = VALID.format(id="long").replace(
        "body: Hi {{ first_name }}, {{ coupon_code }}", f'body: "{long_body}"'
    )
    text = text.replace("holdout:", "max_sms_parts: 1\nholdout:")
    with pytest.raises(campaigns.CampaignError) as error:
        campaigns.load_campaign(write(tmp_path, "long", text))
    assert "long.yaml: steps.1.body:" in str(error.value)


def test_the_id_must_match_the_file_name(tmp_path):
    with pytest.raises(campaigns.CampaignError, match="must match the file name"):
        campaigns.load_campaign(write(tmp_path, "other", VALID.format(id="spring")))


def test_every_invalid_file_is_reported_at_once(tmp_path):
    write(tmp_path, "a", "id: [")
    write(tmp_path, "b", VALID.format(id="b").replace("  share: 0.2\n", "  stratify_by: none\n"))
    with pytest.raises(campaigns.CampaignError) as error:
        campaigns.load_campaigns(tmp_path)
    assert "a.yaml: not valid YAML" in str(error.value)
    assert "b.yaml: holdout.share: Field required" in str(error.value)


def test_a_holdout_too_small_to_measure_is_a_warning(tmp_path):
    small = VALID.format(id="small").replace(
        "  share: 0.2\n", "  share: 0.02\n  expected_audience: 20000\n"
    )
    campaign = campaigns.load_campaign(write(tmp_path, "small", small))
    warning = campaigns.holdout_warning(campaign)
    assert warning.startswith("holdout.share: 2.0% is too small") and "is needed" in warning
    assert (
        campaigns.holdout_warning(
            campaign.model_copy(
                update={"holdout": campaigns.Holdout(share=0.3, expected_audience=20000)}
            )
        )
        is None
    )


def test_validate_command_exits_1_listing_every_problem(tmp_path, capsys):
    write(tmp_path, "good", VALID.format(id="good"))
    write(tmp_path, "bad", VALID.format(id="bad").replace("channel: email", "channel: fax"))
    write(tmp_path, "worse", VALID.format(id="worse").replace("[At risk]", "[Sleepy]"))
    assert cli.main(["campaigns", "validate", "--folder", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "error: bad.yaml: steps.0.channel" in out
    assert "error: worse.yaml: audience.rfm_segments" in out
    assert "good.yaml" not in out
    (tmp_path / "bad.yaml").unlink()
    (tmp_path / "worse.yaml").unlink()
    assert cli.main(["campaigns", "validate", "--folder", str(tmp_path)]) == 0


def test_the_audience_task_refuses_an_invalid_campaign_and_runs_the_others(tmp_path, conn, caplog):
    from test_audiences import Shop

    from winback import pipeline

    shop = Shop(conn)
    shop.add("c1", rfm_segment="At risk", orders_count=5)
    conn.commit()  # the task uses its own connection
    write(tmp_path, "good", VALID.format(id="good"))
    write(tmp_path, "bad", VALID.format(id="bad").replace("channel: email", "channel: fax"))
    result = pipeline.build_audiences("2026-06-01", str(tmp_path))
    assert [c["campaign_id"] for c in result["campaigns"]] == ["good"]
    assert "steps.0.channel" in result["refused"]["bad.yaml"]
    assert "bad.yaml refused" in caplog.text
    sent = conn.execute("select distinct campaign_id from winback.outbox").fetchall()
    assert sent == [("good",)]


def test_counts_command_prints_each_campaigns_audience_and_outbox(
    tmp_path, conn, capsys, monkeypatch
):
    from test_audiences import Shop

    from winback import config, pipeline

    # Counts of the campaign's own groups: no one in the global control group here.
    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "0")

    shop = Shop(conn)
    for i in range(20):
        shop.add(f"c{i}", rfm_segment="At risk", orders_count=5)
    conn.commit()
    write(tmp_path, "good", VALID.format(id="good"))
    pipeline.build_audiences("2026-06-01", str(tmp_path))
    assert cli.main(["campaigns", "counts", "--date", "2026-06-01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["campaign", "audience"]
    name, audience, treatment, holdout, entered, *_ = lines[1].split()
    assert (name, int(audience), int(treatment) + int(holdout)) == ("good", 20, 20)
    assert int(holdout) == 4  # 20% of 20, in the one stratum


def test_a_template_that_shows_a_missing_value_fails_validation(tmp_path):
    """Rendered against a customer without a category, products or recommendations, the
    copy must read without them: no placeholder, no empty phrase."""
    text = VALID.format(id="empty_phrase").replace(
        "subject: Hello", 'subject: "Still thinking of {{ last_purchased_category }}?"'
    )
    path = tmp_path / "empty_phrase.yaml"
    path.write_text(text)
    problems, _ = campaigns.validate_folder(tmp_path)
    assert any(
        "steps.0.subject: renders 'of ?' when a value is missing" in p
        and "last_purchased_category" in p
        for p in problems
    ), problems
    path.write_text(
        text.replace("{{ last_purchased_category }}", "{{ last_purchased_category or 'us' }}")
    )
    assert campaigns.validate_folder(tmp_path)[0] == []


def test_a_missing_value_never_prints_as_none_and_a_variant_falls_back(conn):
    from winback.campaigns import messages, personalization

    assert personalization.render("Hi {{ first_name }}!", {"first_name": None}) == "Hi !"
    builder = messages.MessageBuilder(conn, date(2026, 11, 20))
    context = {"last_purchased_category": None, "first_name": "Ada"}
    variant = "Still thinking of {{ last_purchased_category }}?"
    step_text = "{{ first_name }}, we miss you"
    assert builder._render_or_fall_back(variant, step_text, context) == "Ada, we miss you"
    context["last_purchased_category"] = "Teapots"
    assert builder._render_or_fall_back(variant, step_text, context) == (
        "Still thinking of Teapots?"
    )
