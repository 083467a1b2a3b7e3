"""Delivery: the providers, the send ledger and sync, and the feedback they return.

`sync` (the seam the pipeline calls) runs `send` over the `ledger` for messages and the
`audience_mirror` for audiences; `providers/registry.py` says which adapter serves what.
`feedback` stores what providers report; `returnpath` is `winback serve`, where their
signed webhooks, customers' clicks and one-click unsubscribes arrive.
"""
