"""Campaign files: what a marketer asks for, as YAML a data engineer reviews in a pull request.

Each file under `include/campaigns/` defines one campaign: who it is for (an audience rule
over `marts.customer_features`), its holdout, caps, priority and a journey of steps. It is
validated with pydantic, and every problem names the file, the field and what is wrong, so
`winback campaigns validate` and the daily audience task can refuse an invalid campaign
and say why. Validation also compiles the audience rule, checks every template against the
names a message can use and measures every SMS body against the provider's length limit,
so none of these can fail on the day a message is sent.

The file format is documented in docs/campaigns.md.
"""

from __future__ import annotations

import contextlib
import re
from datetime import date, datetime, time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
MESSAGE_CHANNELS = ("email", "sms")  # channels that reach a person and need consent
# What happened to a step, as a later step's condition. `nothing` = sent, and neither
# opened, clicked nor followed by a purchase; the `not_` forms are the complements.
Outcome = Literal[
    "any",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "purchased",
    "nothing",
    "not_delivered",
    "not_opened",
    "not_clicked",
]
StratifyBy = Literal["rfm_segment", "lifecycle_stage", "churn_risk_band", "none"]
EndAction = Literal["withdraw_sms_consent", "withdraw_email_consent"]
ExitEvent = Literal["purchase", "unsubscribe", "click"]

# Names a template can use besides the columns of customer_features: what personalisation
# adds per customer and step (see `winback.campaigns.messages.MessageBuilder.build_many`).
MESSAGE_NAMES = frozenset(
    {
        "campaign_id",
        "step_id",
        "variant",
        "coupon_code",
        "coupon_expires_on",
        "coupon_discount",
        "landing_url",
        "tracked_link",
        "recommendations",
        "bonus_points",
    }
)
DEFAULT_MAX_SMS_PARTS = 3


class CampaignError(ValueError):
    """A campaign file that cannot be used; the message names file, field and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Audience(_Strict):
    """Who the campaign is for, before eligibility (consent, contact, suppression, caps).

    `rule` is an expression over the documented columns of customer_features; the two
    lists are shortcuts, and-ed with the rule.
    """

    rule: str | None = None
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

    @field_validator("rule")
    @classmethod
    def _rule_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            from winback.campaigns import rules

            try:
                rules.compile_rule(value)
            except rules.RuleError as error:
                raise ValueError(f"invalid rule: {error}") from None
        return value

    @model_validator(mode="after")
    def _not_everyone(self) -> Audience:
        if not self.rule and not self.rfm_segments and not self.lifecycle_stages:
            raise ValueError("an audience needs a rule, rfm_segments or lifecycle_stages")
        return self

    @model_validator(mode="after")
    def _expression_compiles(self) -> Audience:
        """The whole expression, as the run compiles it: the shortcuts add a level of
        nesting and length to the rule, which alone may just fit the bounds."""
        from winback.campaigns import rules

        try:
            compiled = rules.compile_rule(self.expression())
            compiled.sql.as_string(None)  # the SQL the run sends renders, without recursion
        except rules.RuleError as error:
            raise ValueError(f"invalid audience (rule and shortcuts together): {error}") from None
        except RecursionError:
            raise ValueError("invalid audience: the rule is too deeply built to run") from None
        return self

    def expression(self) -> str:
        """The whole audience as one rule expression (shortcuts included)."""
        parts = []
        if self.rule:
            parts.append(f"({self.rule})")
        for column, values in (
            ("rfm_segment", self.rfm_segments),
            ("lifecycle_stage", self.lifecycle_stages),
        ):
            if values:
                quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
                parts.append(f"{column} in ({quoted})")
        return " and ".join(parts)


class Holdout(_Strict):
    """The share of the audience that receives nothing, to measure the campaign against.

    Assignment is by a hash of (campaign, customer), balanced within each stratum of
    `stratify_by`, and stored when the customer enters the campaign, so reruns and
    backfills never move anyone. `baseline_rate`, `minimum_uplift` and
    `expected_audience` let validation warn when the share is too small to measure.
    """

    share: float = Field(ge=0.0, lt=1.0)
    stratify_by: StratifyBy = "rfm_segment"
    expected_audience: int | None = Field(default=None, gt=0)
    baseline_rate: float = Field(default=0.05, gt=0.0, lt=1.0)
    minimum_uplift: float = Field(default=0.02, gt=0.0, lt=1.0)


class Caps(_Strict):
    """Frequency caps, counted over `winback.outbox` across every campaign."""

    # No step carrying a coupon goes to a customer who got a coupon message on the same
    # channel in the last N days (the step waits a day and is tried again).
    coupon_cooldown_days: int | None = Field(default=None, ge=1, le=365)
    # At most N messages per channel in any 7 days, all campaigns together.
    max_per_channel_per_week: dict[Literal["email", "sms"], int] = Field(default_factory=dict)
    # A capped step waits at most this many days, then is skipped.
    max_deferral_days: int = Field(default=7, ge=0, le=60)

    @field_validator("max_per_channel_per_week")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"caps must be at least 1 message a week: {bad}")
        return value


class QuietHours(_Strict):
    """Local hours (customer's time zone) in which no SMS is sent; such SMS are scheduled."""

    start: time = time(21, 0)
    end: time = time(9, 0)

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours start and end must differ")
        return self

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


class Coupon(_Strict):
    discount_percent: float | None = Field(default=None, gt=0, le=100)
    discount_amount: float | None = Field(default=None, gt=0)
    min_order_value: float | None = Field(default=None, ge=0)
    valid_days: int = Field(default=14, ge=1, le=365)

    @model_validator(mode="after")
    def _one_discount(self) -> Coupon:
        if (self.discount_percent is None) == (self.discount_amount is None):
            raise ValueError("a coupon needs exactly one of discount_percent, discount_amount")
        return self

    def describe(self) -> str:
        off = (
            f"{self.discount_percent:g}%"
            if self.discount_percent is not None
            else f"{self.discount_amount:g} EUR"
        )
        minimum = f" on orders over {self.min_order_value:g} EUR" if self.min_order_value else ""
        return off + minimum


class Incentive(_Strict):
    coupon: Coupon | None = None
    bonus_points: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> Incentive:
        if self.coupon is None and self.bonus_points is None:
            raise ValueError("an incentive needs a coupon or bonus_points")
        return self


class Variant(_Strict):
    """One arm of an A/B test: overrides the step's subject and/or body."""

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    weight: float = Field(default=1.0, gt=0)
    subject: str | None = None
    body: str | None = None


class Condition(_Strict):
    """`outcome` of step `step` (default: the step before this one)."""

    outcome: Outcome = "any"
    step: str | None = None


class Step(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    channel: Channel
    # Days after the previous step was due (sent or skipped); the first step counts from
    # the day the customer entered the campaign.
    wait_days: int = Field(default=0, ge=0, le=730)
    when: Condition = Field(default_factory=Condition)
    subject: str | None = None
    body: str
    variants: list[Variant] = Field(default_factory=list)
    incentive: Incentive | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _short_condition(cls, value):
        # `when: not_opened` is short for `when: {outcome: not_opened}`.
        return {"outcome": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _shape(self) -> Step:
        if self.channel == "email" and not self.subject:
            raise ValueError("an email step needs a subject")
        if self.channel == "email" and any(v.subject == "" for v in self.variants):
            raise ValueError("an email variant's subject cannot be empty")
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"variant ids must be unique: {ids}")
        if len(self.variants) == 1:
            raise ValueError("an A/B test needs at least two variants")
        return self

    def texts(self) -> list[tuple[str, str, str]]:
        """Every (where, which, template) this step can send, variants included."""
        found = [("", "body", self.body)]
        if self.subject:
            found.append(("", "subject", self.subject))
        for index, variant in enumerate(self.variants):
            if variant.body:
                found.append((f"variants.{index}.", "body", variant.body))
            if variant.subject:
                found.append((f"variants.{index}.", "subject", variant.subject))
        return found


class Journey(_Strict):
    # A customer always leaves on unsubscribe; on purchase unless a step branches on it.
    exit_on: list[ExitEvent] = Field(default_factory=lambda: ["purchase", "unsubscribe"])
    # Days after the last step before the journey ends (and `on_end` runs): the time the
    # last message gets to work. A purchase in that time is an exit, not an end.
    end_after_days: int = Field(default=0, ge=0, le=365)
    on_end: list[EndAction] = Field(default_factory=list)

    @field_validator("exit_on")
    @classmethod
    def _always_unsubscribe(cls, value: list[str]) -> list[str]:
        if "unsubscribe" not in value:
            raise ValueError("a journey always ends on unsubscribe; add it to exit_on")
        return value


class Campaign(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$", max_length=64)
    description: str
    starts_on: date
    ends_on: date
    priority: int = Field(default=100, ge=0)
    audience: Audience
    channels: list[Channel] = Field(min_length=1)
    holdout: Holdout
    caps: Caps = Field(default_factory=Caps)
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    max_sms_parts: int = Field(default=DEFAULT_MAX_SMS_PARTS, ge=1, le=10)
    journey: Journey = Field(default_factory=Journey)
    steps: list[Step] = Field(min_length=1)
    landing_url: str = "https://shop.example.com/"
    measurement_window_days: int | None = Field(default=None, ge=1)
    attribution_days: int | None = Field(default=None, ge=1)

    @field_validator("landing_url")
    @classmethod
    def _landing_url_is_a_web_page(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("landing_url must be an http or https address with a host")
        if any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError("landing_url may not hold spaces or control characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        if self.ends_on < self.starts_on:
            raise ValueError(f"ends_on {self.ends_on} is before starts_on {self.starts_on}")
        ids = [s.id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"step ids must be unique: {ids}")
        for index, step in enumerate(self.steps):
            if step.channel not in self.channels:
                raise ValueError(
                    f"steps.{index}.channel: {step.channel!r} is not in channels {self.channels}"
                )
            reference = step.when.step
            if reference is not None and reference not in ids[:index]:
                raise ValueError(
                    f"steps.{index}.when.step: {reference!r} is not an earlier step "
                    f"(earlier: {ids[:index]})"
                )
            if step.when.outcome == "purchased" and "purchase" in self.journey.exit_on:
                raise ValueError(
                    f"steps.{index}.when: 'purchased' can never hold while the journey exits "
                    "on purchase; remove purchase from journey.exit_on"
                )
            if index == 0 and step.when.outcome != "any":
                raise ValueError("steps.0.when: the first step has no earlier step to branch on")
        if "popup" in self.channels and len(self.channels) > 1:
            raise ValueError("a popup campaign exports an audience and sends nothing else")
        return self

    @property
    def holdout_share(self) -> float:
        return self.holdout.share

    def is_active(self, run_date: date) -> bool:
        """Whether customers may enter on `run_date`; journeys already begun go on after."""
        return self.starts_on <= run_date <= self.ends_on

    def step_index(self, step_id: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.id == step_id)


MAX_RENDERED_CHARACTERS = 100_000  # a long HTML e-mail is a few tens of thousands

# Columns that reach a customer directly: never in a popup, which any visitor of the page
# may see and whose CSV export holds no email or phone.
CONTACT_NAMES = frozenset({"email", "phone"})


def template_problems(campaign: Campaign) -> list[str]:
    """Templates using unknown names, and SMS bodies too long once rendered: field: problem."""
    from winback.campaigns import personalization, rules, sms_encoding

    columns = rules.feature_columns()
    allowed = frozenset(columns) | MESSAGE_NAMES
    problems = []
    for index, step in enumerate(campaign.steps):
        # A popup shows on a shared page and its export promises no contact data.
        names = allowed - CONTACT_NAMES if step.channel == "popup" else allowed
        for where, which, template in step.texts():
            field = f"steps.{index}.{where}{which}"
            try:
                personalization.validate_template(template, names)
            except personalization.TemplateError as error:
                problems.append(f"{field}: {error}")
                continue
            problem = missing_value_problem(campaign, step, columns, template)
            if problem:
                problems.append(f"{field}: {problem}")
            # Rendered as the run renders it (the same bounded sandbox), against long sample
            # values: a template that validates renders for every customer, quickly.
            context = longest_sms_context(campaign, step, columns)
            try:
                text = personalization.render(template, context, autoescape=step.channel == "popup")
                if len(text) > MAX_RENDERED_CHARACTERS:
                    raise ValueError(f"renders to more than {MAX_RENDERED_CHARACTERS} characters")
                if step.channel == "sms" and which == "body":
                    sms_encoding.check_sms(text, max_parts=campaign.max_sms_parts)
            except ValueError as error:  # TemplateError is a ValueError too
                problems.append(f"{field}: {error}")
    return problems


def missing_value_problem(
    campaign: Campaign, step: Step, columns: dict[str, str], template: str
) -> str | None:
    """Render `template` for a customer missing each optional value in turn, then all of
    them: the copy must read without them (`{% if %}` or `or 'fallback'`), never show a
    placeholder or an empty phrase."""
    from winback.campaigns import personalization

    full = longest_sms_context(campaign, step, columns)
    optional = personalization.OPTIONAL_VALUES
    cases = [{name: value} for name, value in optional.items()] + [dict(optional)]
    for missing in cases:
        try:
            text = personalization.render(template, {**full, **missing})
        except personalization.TemplateError:
            return None  # reported by the checks above
        problem = personalization.missing_value_problem(text)
        if problem:
            return f"{problem} (missing: {', '.join(missing)})"
    return None


# Long but real values, for checking SMS length: first names are cut to 20 characters in
# messages; categories and product names up to 24; coupon codes and links are the
# lengths winback.campaigns.personalization makes (WB-XXXX-XXXX-XXXX, a 10-character link code).
_LONG_VALUES = {
    "first_name": "Maximilianoalexandro",
    "last_purchased_category": "Garden & outdoor living",
    "favourite_category": "Garden & outdoor living",
    "last_purchased_products": "Stainless steel kettle, Garden hose 25 m",
    "recommendations": ["Stainless steel kettle", "Garden hose 25 m", "Terracotta pot"],
    "coupon_code": "WB-XXXX-XXXX-XXXX",
    "coupon_expires_on": date(2026, 12, 31),
    "landing_url": "https://shop.example.com/?utm_source=winback&utm_medium=sms",
    "tracked_link": "https://wb.example/s/xxxxxxxxxx",
    "campaign_id": "x" * 24,
    "step_id": "x" * 16,
    "variant": "x" * 8,
    "bonus_points": 10000,
}
_LONG_BY_TYPE = {
    "number": 1000000,
    "date": date(2026, 12, 31),
    "timestamp": datetime(2026, 12, 31, 23, 59, 59),
    "boolean": True,
}


def longest_sms_context(campaign: Campaign, step: Step, columns: dict[str, str]) -> dict:
    """A customer whose personal values are as long as real ones get, for length checks."""
    from winback.campaigns import rules

    context = {
        name: _LONG_BY_TYPE.get(rules.column_kind(kind) or "text", "x" * 24)
        for name, kind in columns.items()
    }
    context.update(_LONG_VALUES)
    context["landing_url"] = campaign.landing_url
    if step.incentive and step.incentive.coupon:
        context["coupon_discount"] = step.incentive.coupon.describe()
    else:
        context["coupon_discount"] = None
    return context


def holdout_warning(campaign: Campaign) -> str | None:
    """A warning when the holdout is too small to measure the campaign's expected effect."""
    from winback.measurement import uplift

    holdout = campaign.holdout
    if holdout.expected_audience is None or "popup" in campaign.channels:
        return None
    if holdout.baseline_rate + holdout.minimum_uplift >= 1:
        return "holdout: baseline_rate + minimum_uplift must stay below 1"
    needed = uplift.required_holdout_share(
        holdout.expected_audience, holdout.baseline_rate, holdout.minimum_uplift
    )
    if needed is None:
        return (
            f"holdout: an audience of {holdout.expected_audience} cannot show an uplift of "
            f"{holdout.minimum_uplift:.1%} over {holdout.baseline_rate:.1%}, whatever the share"
        )
    if holdout.share < needed:
        return (
            f"holdout.share: {holdout.share:.1%} is too small to measure an uplift of "
            f"{holdout.minimum_uplift:.1%} over {holdout.baseline_rate:.1%} in "
            f"{holdout.expected_audience} customers; at least {needed:.1%} is needed"
        )
    return None


def columns_read(campaign: Campaign) -> frozenset[str]:
    """Every column of `marts.customer_features` the campaign reads: its audience rule, the
    names its templates use, its holdout strata, and its channels' eligibility filters.

    What `winback campaigns validate` checks against the model's contract, what the run
    checks against the warehouse, and what the campaign's dbt exposure lists.
    """
    from winback.campaigns import audiences, personalization, rules

    allowed = frozenset(rules.feature_columns()) | MESSAGE_NAMES
    used = set(rules.compile_rule(campaign.audience.expression()).columns)
    for step in campaign.steps:
        for _, _, template in step.texts():
            # A template that does not parse is reported by template_problems.
            with contextlib.suppress(personalization.TemplateError):
                used |= personalization.validate_template(template, allowed) - MESSAGE_NAMES
    if campaign.holdout.stratify_by != "none":
        used.add(campaign.holdout.stratify_by)
    for channel in campaign.channels:
        for eligibility in audiences.ELIGIBILITY[channel]:
            used |= set(_FEATURE_REFERENCE.findall(eligibility.predicate))
    return frozenset(used)


# `f.<column>` in the eligibility filters' SQL: the features table is aliased `f`.
_FEATURE_REFERENCE = re.compile(r"\bf\.([a-z_][a-z0-9_]*)")


def column_problems(campaign: Campaign) -> list[str]:
    """Columns the campaign reads that `customer_features`' contract does not declare."""
    from winback.campaigns import rules
    from winback.warehouse import contracts

    try:
        used = columns_read(campaign)
    except rules.RuleError:  # already reported by the audience rule's own validation
        return []
    return [
        f"reads column {column!r}, which the customer_features contract does not declare "
        "(renamed or removed in dbt_project/models/marts?)"
        for column in contracts.undeclared(rules.FEATURES_MODEL, used)
    ]


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for e in error.errors():
        location = ".".join(str(p) for p in e["loc"]) or "(campaign)"
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{location}: {message}")
    return problems


def load_campaign(path: Path) -> Campaign:
    """One campaign file, fully checked; CampaignError lists every problem found."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CampaignError(f"{path.name}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise CampaignError(f"{path.name}: expected a mapping of campaign fields")
    try:
        campaign = Campaign.model_validate(document)
    except ValidationError as error:
        raise CampaignError(
            "\n".join(f"{path.name}: {p}" for p in _pydantic_problems(error))
        ) from None
    problems = template_problems(campaign) + column_problems(campaign)
    if campaign.id != path.stem:
        problems.insert(0, f"id: {campaign.id!r} must match the file name")
    if problems:
        raise CampaignError("\n".join(f"{path.name}: {p}" for p in problems))
    return campaign


def load_campaigns(folder: Path = config.CAMPAIGNS_DIR) -> list[Campaign]:
    """All campaigns, highest priority first, or a CampaignError listing every problem."""
    campaigns, errors = [], []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            campaigns.append(load_campaign(path))
        except CampaignError as error:
            errors.append(str(error))
    if errors:
        raise CampaignError("invalid campaign files:\n" + "\n".join(errors))
    return sorted(campaigns, key=lambda c: (-c.priority, c.id))


def load_valid_campaigns(
    folder: Path = config.CAMPAIGNS_DIR,
) -> tuple[list[Campaign], dict[str, str]]:
    """The valid campaigns, and for each invalid file the reason it is refused.

    The daily run uses this: one broken file must not stop the other campaigns, and the
    broken one must not send anything.
    """
    campaigns, refused = [], {}
    for path in sorted(folder.glob("*.y*ml")):
        try:
            campaigns.append(load_campaign(path))
        except CampaignError as error:
            refused[path.name] = str(error)
    return sorted(campaigns, key=lambda c: (-c.priority, c.id)), refused


def validate_folder(folder: Path = config.CAMPAIGNS_DIR) -> tuple[list[str], list[str]]:
    """(problems, warnings) of every campaign file, for `winback campaigns validate`."""
    problems, warnings = [], []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            campaign = load_campaign(path)
        except CampaignError as error:
            problems.extend(str(error).splitlines())
            continue
        warning = holdout_warning(campaign)
        if warning:
            warnings.append(f"{path.name}: {warning}")
    return problems, warnings
