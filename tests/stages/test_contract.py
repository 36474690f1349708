"""The contract every registered stage passes: it runs to end of stream, its flush output and the
end of stream reach the next stage, teardown always runs, and an error inside it leaves the pipeline
as the original exception type with the stage's name attached.

A new stage type registers a case in `CASES` (a factory building the stage and its input items);
`test_every_registered_stage_has_a_contract_case` fails until it does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from streamflow import Frame, Pipeline, Source, Stage
from streamflow.frame import Item
from streamflow.registry import registered_types, resolve_stage_type
from streamflow.testing import ListSink, ListSource, make_frames

Case = Callable[[Path], tuple[Stage, list[Item]]]


def _null(tmp_path: Path) -> tuple[Stage, list[Item]]:
    return resolve_stage_type("null")(name="under_test"), list(make_frames(3))


CASES: dict[str, Case] = {
    "null": _null,
}


class ContractError(RuntimeError):
    pass


def _pipeline(stage: Stage, items: list[Item]) -> tuple[Pipeline, ListSink]:
    sink = ListSink(name="contract_sink")
    stages: list[Stage] = [stage, sink] if isinstance(stage, Source) else [ListSource(items), stage, sink]
    return Pipeline(stages, device="cpu"), sink


def _spy_teardown(stage: Stage) -> list[bool]:
    calls: list[bool] = []
    original = stage.teardown

    def teardown() -> None:
        calls.append(True)
        original()

    stage.teardown = teardown  # type: ignore[method-assign]
    return calls


def test_every_registered_stage_has_a_contract_case() -> None:
    missing = sorted(set(registered_types()) - set(CASES))
    assert not missing, f"stage types without a contract case in tests/stages/test_contract.py: {missing}"


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_stage_runs_to_end_of_stream_and_tears_down(type_name: str, tmp_path: Path) -> None:
    stage, items = CASES[type_name](tmp_path)
    assert isinstance(stage, resolve_stage_type(type_name))
    torn_down = _spy_teardown(stage)
    pipeline, sink = _pipeline(stage, items)
    pipeline.run_sync()
    assert sink.flushed, "end of stream reached the stage after this one"
    assert torn_down == [True]
    assert all(isinstance(f, Frame) for f in sink.frames)


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_error_inside_stage_propagates_with_type_and_name(type_name: str, tmp_path: Path) -> None:
    stage, items = CASES[type_name](tmp_path)
    torn_down = _spy_teardown(stage)

    def fail(*args: object) -> None:
        raise ContractError(f"injected into {type_name}")

    if isinstance(stage, Source):
        stage.generate = fail  # type: ignore[method-assign,assignment]
    else:
        stage.process = fail  # type: ignore[method-assign,assignment]
    pipeline, sink = _pipeline(stage, items)
    with pytest.raises(ContractError) as caught:
        pipeline.run_sync()
    assert caught.value.stage_name == "under_test"  # type: ignore[attr-defined]
    assert torn_down == [True]
    assert sink.torn_down
