"""The shared vocabulary of every layer: clock, errors, roles and access, statuses and labels.

Nothing here imports any other retroface package, so the domain services, the adapters and the
front ends (CLI, API, web) can all depend on it without cycles.
"""
