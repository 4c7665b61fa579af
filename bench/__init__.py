"""Benchmarks of every job against the local sandbox, and the report they make.

``make bench`` runs, each against the sandbox in a process of its own:

- ``python -m bench [--subjects N] [--batch-size 250]``: seeds N confirmed newsletter
  subscriptions through the real intake; posts the same receiver batches with a plain
  ``requests.Session`` (the baseline) and runs ``sync-newsletter-consents`` in full, three
  times each, in turns (each full sync from a copy of the seeded database, into an emptied
  sandbox; the medians count); then five times more, each after another 1% of the
  subscriptions changed (the median counts). When the incremental target is missed, another
  1% change is synced under pyinstrument to show where the time goes.
- ``python -m bench.bookings``, ``python -m bench.student_id``: ``push-bookings`` and
  ``forward-student-id-orders`` against a plain-requests baseline making the same calls.
- ``python -m bench.erasure``: the erasure fan-out in parallel vs one processor after the other.
- ``python -m bench.memory [--subscribers 1000000]``: the peak memory of a full newsletter sync
  in a process of its own, the database seeded directly (``bench.direct_seed``).
- ``python -m bench.intake [--subjects 100000] [--orders 1000]``: intake of a file chunk by
  chunk (consent lines/s against the one-transaction path, re-import, peak memory of
  student-ID orders with maximum-size uploads).
- ``python -m bench.latency``: every job with answers after 100 ms and 50 calls/s per
  processor: achieved calls/s against the configured rate (issue 19).
- ``python -m bench.overhead``: the fixed cost of one ``psync run`` with nothing to do,
  against a running Prefect server and on the temporary one (issue 19).
- ``python -m bench.report``: ``bench/results/*.json`` -> ``bench/REPORT.md``.

Everything is reported as ratios against the baseline measured in the same run, never as
absolute timed assertions:

- full sync throughput / baseline throughput   (target >= 0.8)
- incremental sync time / full sync time       (target <  0.05)
- Prefect task runs / batches of the full sync (target <= 1 per batch)
- peak memory of a 1,000,000-subscriber full sync (target < 250 MB)

and the other jobs' targets, each in ``bench/REPORT.md``'s table.

Results go to stdout and ``bench/results/*.json`` (git-ignored). The exit code is 0 even
when a target is missed: it is a report, not a test. Only a crash exits non-zero.

This package imports nothing from prefect at import time: ``bench.env`` must set the offline
environment before the first ``import prefect``.
"""
