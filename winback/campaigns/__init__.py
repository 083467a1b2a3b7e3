"""Campaigns: campaign files, audience rules, journeys and the messages they build."""
