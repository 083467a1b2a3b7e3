"""The provider registry: which adapter serves each channel and audience.

This is where a provider is registered: add its module to `winback.delivery.providers`,
then return it from `message_providers()` (keyed by the outbox channel it delivers) or
`audience_providers()` (keyed by its name), built from its Airflow connection when that
connection is configured.
"""

from __future__ import annotations

from winback.delivery.providers import AudienceProvider, MessageProvider, is_configured


def message_providers() -> dict[str, MessageProvider]:
    """channel -> provider, from the configured Airflow connections."""
    from winback.delivery.providers import popup, smtp, twilio

    providers: dict[str, MessageProvider] = {"popup": popup.from_connection()}
    if is_configured(smtp.CONN_ID):
        providers["email"] = smtp.SmtpEmail.from_connection()
    if is_configured(twilio.CONN_ID):
        providers["sms"] = twilio.TwilioSms.from_connection()
    return providers


def audience_providers() -> dict[str, AudienceProvider]:
    from winback.delivery.providers import mailchimp, meta

    providers: dict[str, AudienceProvider] = {}
    if is_configured(mailchimp.CONN_ID):
        providers["mailchimp"] = mailchimp.MailchimpAudience.from_connection()
    if is_configured(meta.CONN_ID):
        providers["meta"] = meta.MetaCustomAudienceFile.from_connection()
    return providers
