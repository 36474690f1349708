"""A run cancelled from outside while a stage is stuck ends within the stop timeout (issue 17 item 3):
callers that bound a run with `asyncio.wait_for` get control back, and the stuck stage is named."""

from __future__ import annotations

import asyncio

import pytest

from streamflow import Pipeline
from streamflow.testing import ListSink, ListSource, make_frames
from support.fault_stages import BlockOn


def test_wait_for_gets_control_back_from_a_stuck_stage() -> None:
    sink = ListSink()
    stuck = BlockOn(name="stuck", index=2)
    pipeline = Pipeline([ListSource(make_frames(6)), stuck, sink], device="cpu", stop_timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            asyncio.run(asyncio.wait_for(pipeline.run(), 0.5))
        assert not stuck.returned  # control came back while the stage was still inside process()
        assert pipeline.unfinished == ["stuck"]
        assert [frame.index for frame in sink.frames] == [0, 1] and sink.torn_down
    finally:
        stuck.release.set()  # no thread left behind in the test process
