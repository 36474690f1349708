"""What a stage may return, and the errors that name it when it breaks the contract (issue 17 item 7)."""

from __future__ import annotations

from typing import Any

import pytest

from streamflow import Batch, Frame, Pipeline, Stage
from streamflow.pipeline import StageContractError
from streamflow.testing import ListSink, ListSource, make_frames
from support.fault_stages import Exits, Returns, ReturnsNone


def run(*stages: Stage) -> ListSink:
    sink = ListSink()
    Pipeline([ListSource(make_frames(3)), *stages, sink], device="cpu").run_sync()
    return sink


def test_a_stage_that_returns_none_for_every_frame_is_named() -> None:
    with pytest.raises(
        StageContractError, match=r"stage 'forgetful' \(ReturnsNone\): process\(\) returned None for all 3"
    ):
        run(ReturnsNone(name="forgetful"))


class DropOdd(Stage):
    def process(self, item: Frame | Batch) -> Any:
        return [] if item.frames[0].index % 2 else item


class QuietSink(ReturnsNone):
    is_sink = True


def test_dropping_on_purpose_and_sinks_in_the_middle_are_fine() -> None:
    assert [f.index for f in run(DropOdd()).frames] == [0, 2]
    assert run(QuietSink()).frames == []


@pytest.mark.parametrize(
    ("value", "shown"), [("text", "str 'frames'"), ("dict", "dict {'frames': [Frame("), ("int", "int 3")]
)
def test_a_value_that_is_not_an_item_is_named_with_what_is_allowed(value: str, shown: str) -> None:
    with pytest.raises(StageContractError) as caught:
        run(Returns(name="odd", value=value))
    message = str(caught.value)
    assert message.startswith(f"stage 'odd' (Returns): process() returned {shown}")
    assert message.endswith("allowed: a Frame, a Batch, EndOfStream, a list or other iterable of them, or None")


def test_sys_exit_becomes_an_error_of_the_stage() -> None:
    with pytest.raises(StageContractError, match=r"stage 'quitter' \(Exits\) called sys.exit\(3\)"):
        run(Exits(name="quitter"))
