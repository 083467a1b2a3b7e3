"""Campaign files: what a marketer asks for, as YAML a data engineer reviews in a pull request.

Each file under `include/campaigns/` defines one campaign. It is validated with pydantic,
and a validation error names the file, the field and the problem, so the daily DAG can
refuse to send for an invalid campaign and say why.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from winback import config

RFM_SEGMENTS = (
    "Champions",
    "Loyal customers",
    "Potential loyalists",
    "New customers",
    "Promising",
    "Need attention",
    "About to sleep",
    "At risk",
    "Can't lose them",
    "Hibernating",
    "Lost",
)
LIFECYCLE_STAGES = ("new", "active", "at_risk", "inactive", "lost", "reactivated")
Channel = Literal["email", "sms", "popup"]


class CampaignError(ValueError):
    """A campaign file that cannot be used; the message names file, field and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Audience(_Strict):
    """Who the campaign is for, before eligibility (consent, contact, suppression)."""

    rfm_segments: list[str] = Field(default_factory=list)
    lifecycle_stages: list[str] = Field(default_factory=list)

    @field_validator("rfm_segments")
    @classmethod
    def _known_segments(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in RFM_SEGMENTS]
        if unknown:
            raise ValueError(f"unknown RFM segment(s) {unknown}; valid: {list(RFM_SEGMENTS)}")
        return value

    @field_validator("lifecycle_stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in LIFECYCLE_STAGES]
        if unknown:
            raise ValueError(
                f"unknown lifecycle stage(s) {unknown}; valid: {list(LIFECYCLE_STAGES)}"
            )
        return value

    @model_validator(mode="after")
    def _not_everyone(self) -> Audience:
        if not self.rfm_segments and not self.lifecycle_stages:
            raise ValueError("an audience needs rfm_segments or lifecycle_stages")
        return self


class Step(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    channel: Channel
    subject: str | None = None
    body: str

    @model_validator(mode="after")
    def _email_has_subject(self) -> Step:
        if self.channel == "email" and not self.subject:
            raise ValueError("an email step needs a subject")
        return self


class Campaign(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$", max_length=64)
    description: str
    starts_on: date
    ends_on: date
    priority: int = Field(default=100, ge=0)
    holdout_share: float = Field(ge=0.0, lt=1.0)
    audience: Audience
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _window(self) -> Campaign:
        if self.ends_on < self.starts_on:
            raise ValueError(f"ends_on {self.ends_on} is before starts_on {self.starts_on}")
        ids = [s.id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"step ids must be unique: {ids}")
        return self

    def is_active(self, run_date: date) -> bool:
        return self.starts_on <= run_date <= self.ends_on


def load_campaign(path: Path) -> Campaign:
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CampaignError(f"{path.name}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise CampaignError(f"{path.name}: expected a mapping of campaign fields")
    try:
        campaign = Campaign.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(campaign)'}: {e['msg']}"
            for e in error.errors()
        )
        raise CampaignError(f"{path.name}: {problems}") from None
    if campaign.id != path.stem:
        raise CampaignError(f"{path.name}: id: {campaign.id!r} must match the file name")
    return campaign


def load_campaigns(folder: Path = config.CAMPAIGNS_DIR) -> list[Campaign]:
    """All campaigns, or a CampaignError listing every invalid file."""
    campaigns, errors = [], []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            campaigns.append(load_campaign(path))
        except CampaignError as error:
            errors.append(str(error))
    if errors:
        raise CampaignError("invalid campaign files:\n" + "\n".join(errors))
    return sorted(campaigns, key=lambda c: (-c.priority, c.id))
