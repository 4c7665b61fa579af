"""No flow writes its result anywhere, and no run asks the server where it would.

A flow's return value is counts, shown in its artifact; with a default result storage set on
the Prefect server, Prefect would persist every return value there unless the flow says no,
and would ask the server for that default at the start of every run (``flows.common.NO_RESULTS``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.newsletter import sync_newsletter_consents
from flows.registry import FLOWS, get_flow


def test_every_flow_persists_no_result_and_names_no_storage_to_look_up():
    for name in FLOWS:
        flow = get_flow(name)
        assert flow.persist_result is False, name
        assert flow.result_storage == Path(os.devnull), name


@pytest.mark.usefixtures("prefect_harness", "against_sandbox")
def test_a_run_asks_the_server_nothing_about_result_storage_and_writes_no_result(monkeypatch):
    import prefect.results

    asked: list[str] = []

    def read_default():
        asked.append("server default result storage")
        return None

    monkeypatch.setattr(prefect.results, "_read_server_default_result_storage_block_id", read_default)
    assert sync_newsletter_consents(lists=["service_offers"]) == {}  # nothing to do, returned all the same
    assert asked == []
