"""The contract every registered stage passes: it runs to end of stream, its flush output and the
end of stream reach the next stage, teardown always runs, and an error inside it leaves the pipeline
as the original exception type with the stage's name attached.

A new stage type registers a case in `CASES` (a factory building the stage and its input items);
`test_every_registered_stage_has_a_contract_case` fails until it does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from streamflow import Batch, Frame, Pipeline, Source, Stage
from streamflow.frame import Item
from streamflow.registry import registered_types, resolve_stage_type
from streamflow.testing import ListSink, ListSource, make_frames, run_stage
from streamflow.video.synth import write_clip
from support.message_servers import MosquittoServer, RedisServer, missing_binary
from support.onnx_models import export_small_model
from support.rtsp_server import RtspServer, server_unavailable_reason

Case = Callable[[Path], tuple[Stage, list[Item]]]


def _null(tmp_path: Path) -> tuple[Stage, list[Item]]:
    return resolve_stage_type("null")(name="under_test"), list(make_frames(3))


def _decode(tmp_path: Path) -> tuple[Stage, list[Item]]:
    clip = write_clip(tmp_path / "clip.mp4", width=64, height=48, frames=6)
    return resolve_stage_type("decode")(name="under_test", uri=str(clip)), []


def _rtsp(tmp_path: Path) -> tuple[Stage, list[Item]]:
    reason = server_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = RtspServer(width=64, height=48)
    server.start()
    _SERVERS.append(server)
    return resolve_stage_type("rtsp")(name="under_test", uri=server.uri), []


def _encode(tmp_path: Path) -> tuple[Stage, list[Item]]:
    return resolve_stage_type("encode")(name="under_test", path=str(tmp_path / "out.mp4")), list(
        make_frames(4, height=48, width=64)
    )


def _jsonl(tmp_path: Path) -> tuple[Stage, list[Item]]:
    return resolve_stage_type("jsonl")(name="under_test", path=str(tmp_path / "out.jsonl")), list(make_frames(3))


def _message_server(server_class: type[RedisServer | MosquittoServer], binary: str) -> RedisServer | MosquittoServer:
    reason = missing_binary(binary)
    if reason:
        pytest.skip(reason)
    server = server_class()
    server.start()
    _SERVERS.append(server)
    return server


def _redis(tmp_path: Path) -> tuple[Stage, list[Item]]:
    server = _message_server(RedisServer, "redis-server")
    return resolve_stage_type("redis")(name="under_test", port=server.port), list(make_frames(3))


def _mqtt(tmp_path: Path) -> tuple[Stage, list[Item]]:
    server = _message_server(MosquittoServer, "mosquitto")
    return resolve_stage_type("mqtt")(name="under_test", port=server.port), list(make_frames(3))


def _preprocess(tmp_path: Path) -> tuple[Stage, list[Item]]:
    return resolve_stage_type("preprocess")(name="under_test", width=32, height=32), list(
        make_frames(3, height=48, width=64)
    )


def _infer(tmp_path: Path) -> tuple[Stage, list[Item]]:
    model = export_small_model(tmp_path / "small.onnx", batch=1, height=32, width=48)
    items = [Batch([frame], data=torch.rand(1, 3, 32, 48)) for frame in make_frames(3)]
    return resolve_stage_type("infer")(name="under_test", model=model, backend="onnxruntime"), list(items)


def _centerface_inputs(count: int) -> list[Item]:
    """Real CenterFace outputs (ONNX Runtime, 64x64 input) for `count` small frames."""
    preprocess = resolve_stage_type("preprocess")(width=64, height=64)
    infer = resolve_stage_type("infer")(
        model=Path("models/centerface.onnx"), backend="onnxruntime", input_shapes={"input.1": [1, 3, 64, 64]}
    )
    return list(run_stage(infer, run_stage(preprocess, list(make_frames(count, height=48, width=64)))))


def _centerface(tmp_path: Path) -> tuple[Stage, list[Item]]:
    return resolve_stage_type("centerface")(name="under_test"), _centerface_inputs(2)


def _ultraface(tmp_path: Path) -> tuple[Stage, list[Item]]:
    """Real UltraFace outputs (ONNX Runtime, the model's own 480x640 input) for two small frames."""
    preprocess = resolve_stage_type("preprocess")(width=640, height=480, mean=(127,) * 3, std=(128,) * 3)
    infer = resolve_stage_type("infer")(model=Path("models/version-RFB-640.onnx"), backend="onnxruntime")
    items = list(run_stage(infer, run_stage(preprocess, list(make_frames(2, height=48, width=64)))))
    return resolve_stage_type("ultraface")(name="under_test"), items


def _annotate(tmp_path: Path) -> tuple[Stage, list[Item]]:
    frames = make_frames(3, height=48, width=64)
    for frame in frames:
        frame.results["boxes"] = torch.tensor([[4.0, 4.0, 20.0, 30.0]])
    return resolve_stage_type("annotate")(name="under_test"), list(frames)


def _window(tmp_path: Path) -> tuple[Stage, list[Item]]:
    return resolve_stage_type("window")(name="under_test", size=3), list(make_frames(4, height=8, width=8))


def _sr_output(tmp_path: Path) -> tuple[Stage, list[Item]]:
    frames = make_frames(2, height=4, width=4)
    batch = Batch(frames, data=torch.zeros(2, 15, 4, 4), results={"output": torch.rand(2, 3, 8, 8)})
    return resolve_stage_type("sr_output")(name="under_test", result="output"), [batch]


CASES: dict[str, Case] = {
    "annotate": _annotate,
    "centerface": _centerface,
    "decode": _decode,
    "discard": _null,
    "encode": _encode,
    "infer": _infer,
    "jsonl": _jsonl,
    "mqtt": _mqtt,
    "null": _null,
    "preprocess": _preprocess,
    "redis": _redis,
    "rtsp": _rtsp,
    "sr_output": _sr_output,
    "ultraface": _ultraface,
    "window": _window,
}
_SERVERS: list[RtspServer | RedisServer | MosquittoServer] = []


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    while _SERVERS:
        _SERVERS.pop().stop()


class ContractError(RuntimeError):
    pass


def _pipeline(stage: Stage, items: list[Item]) -> tuple[Pipeline, ListSink]:
    sink = ListSink(name="contract_sink")
    stages: list[Stage] = [stage, sink] if isinstance(stage, Source) else [ListSource(items), stage, sink]
    # Live sources never end by themselves: the contract run takes a few frames, then stops.
    return Pipeline(stages, device="cpu", max_frames=5 if isinstance(stage, Source) and stage.live else None), sink


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
