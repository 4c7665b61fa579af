"""Benchmark of the newsletter consent sync against the local CleverReach sandbox.

``python -m bench [--subjects N] [--batch-size 250]`` (``make bench``) seeds N confirmed
newsletter subscriptions through the real intake, posts the same receiver batches once with a
plain ``requests.Session`` (the baseline), then runs ``sync-newsletter-consents`` in full and
again after 1% of the subscriptions changed. Everything is reported as ratios against the
baseline measured in the same run, never as absolute timed assertions:

- full sync throughput / baseline throughput   (target >= 0.5)
- incremental sync time / full sync time       (target <  0.05)
- Prefect task runs / batches of the full sync (target <= 1 per batch)

Results go to stdout and ``bench/results/latest.json`` (git-ignored). The exit code is 0 even
when a target is missed: it is a report, not a test. Only a crash exits non-zero.

This package imports nothing from prefect at import time: ``bench.env`` must set the offline
environment before the first ``import prefect``.
"""
