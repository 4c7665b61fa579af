"""``core.heap``: the cycle collector paused for a bulk step, and left as it was found."""

from __future__ import annotations

import gc

from core.heap import collector_paused


def test_the_collector_pause_restores_what_it_found():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off before; it stays off
    finally:
        gc.enable()
