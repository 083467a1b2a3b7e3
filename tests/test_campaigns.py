"""Campaign files: validation that names the file, the field and the problem."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from winback import campaigns

VALID = """
id: {id}
description: test campaign
starts_on: 2026-01-01
ends_on: 2026-12-31
holdout_share: 0.2
audience:
  rfm_segments: [At risk]
steps:
  - id: first_touch
    channel: email
    subject: Hello
    body: Hi {{{{ first_name }}}}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_shipped_campaigns_are_valid():
    loaded = campaigns.load_campaigns()
    assert {c.id for c in loaded} >= {"we_miss_you"}


def test_a_valid_file_loads(tmp_path):
    campaign = campaigns.load_campaign(write(tmp_path, "spring", VALID.format(id="spring")))
    assert campaign.holdout_share == 0.2
    assert campaign.is_active(date(2026, 6, 1)) and not campaign.is_active(date(2027, 1, 1))


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (("holdout_share: 0.2", "holdout_share: 1.5"), "holdout_share", "less than 1"),
        (("[At risk]", "[Sleepy]"), "audience.rfm_segments", "unknown RFM segment"),
        (("channel: email", "channel: fax"), "steps.0.channel", "'email', 'sms' or 'popup'"),
        (("    subject: Hello\n", ""), "steps.0", "needs a subject"),
        (("ends_on: 2026-12-31", "ends_on: 2025-12-31"), "(campaign)", "before starts_on"),
        (("description: test campaign", "description: x\nsql: drop table"), "sql", "not permitted"),
    ],
)
def test_errors_name_the_file_the_field_and_the_problem(tmp_path, change, field, problem):
    text = VALID.format(id="broken").replace(*change)
    with pytest.raises(campaigns.CampaignError) as error:
        campaigns.load_campaign(write(tmp_path, "broken", text))
    message = str(error.value)
    assert message.startswith("broken.yaml: ")
    assert f"{field}:" in message and problem in message


def test_the_id_must_match_the_file_name(tmp_path):
    with pytest.raises(campaigns.CampaignError, match="must match the file name"):
        campaigns.load_campaign(write(tmp_path, "other", VALID.format(id="spring")))


def test_every_invalid_file_is_reported_at_once(tmp_path):
    write(tmp_path, "a", "id: [")
    write(tmp_path, "b", VALID.format(id="b").replace("holdout_share: 0.2", ""))
    with pytest.raises(campaigns.CampaignError) as error:
        campaigns.load_campaigns(tmp_path)
    assert "a.yaml: not valid YAML" in str(error.value)
    assert "b.yaml: holdout_share: Field required" in str(error.value)
