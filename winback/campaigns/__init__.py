"""Campaigns: campaign files, audience rules, audiences, journeys, caps, the messages they
build, and deterministic assignment."""
