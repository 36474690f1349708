"""NVDEC decoding (GPU only): output equals PyAV's decode of the same clip; API contract of the helpers."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streamflow.frame import PixelFormat
from streamflow.ops.color import nv12_to_rgb
from streamflow.video.nvdec import (
    NvdecError,
    NvdecFileDecoder,
    PacketDecoder,
    iter_annexb_packets,
    nvdec_unsupported_reason,
    packet_decode_frames,
)
from streamflow.video.probe import probe
from streamflow.video.synth import write_clip, write_resolution_change

pytestmark = pytest.mark.gpu

CLIPS = {
    "h264": ("h264", "mp4", 320, 240, 30),
    "hevc": ("hevc", "mkv", 320, 240, 30),
    "h264_854x480": ("h264", "mp4", 854, 480, 6),
    "h264_1918x1078": ("h264", "mp4", 1918, 1078, 4),
    "hevc_1918x1078": ("hevc", "mp4", 1918, 1078, 4),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nvdec")
    out = {}
    for name, (codec, ext, width, height, frames) in CLIPS.items():
        out[name] = write_clip(root / f"{name}.{ext}", width=width, height=height, frames=frames, codec=codec, gop=10)
    out["mpeg4"] = write_clip(root / "mpeg4.mp4", width=64, height=48, frames=4, codec="mpeg4")
    out["change"] = write_resolution_change(root / "change.h264", [(320, 240), (480, 272)], frames_each=5)
    return out


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = np.asarray(torch.as_tensor(a).cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(b).cpu(), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def pyav_frames(path: Path) -> list[tuple[np.ndarray, np.ndarray, int | None]]:
    """(NV12, RGB CHW (BT.709 limited), pts) of every frame, decoded by PyAV on the CPU."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            nv12 = np.ascontiguousarray(frame.reformat(format="nv12").to_ndarray())
            rgb = frame.to_ndarray(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG").transpose(2, 0, 1)
            out.append((nv12, rgb, frame.pts))
    return out


def decode_packets(decoder: PacketDecoder, path: Path) -> list[tuple[torch.Tensor, int | None]]:
    """Every (NV12, pts) pair `decoder` gives for the Annex B packets of `path`, flush included."""
    with av.open(str(path)) as container:
        pairs = []
        for data, pts in iter_annexb_packets(container, container.streams.video[0]):
            pairs += decoder.decode(data, pts)
        pairs += decoder.flush()
    return pairs


@pytest.mark.parametrize("name", list(CLIPS))
def test_packet_decoder_matches_pyav(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    reference = pyav_frames(path)
    found = probe(path)
    frames = list(packet_decode_frames(path, found, output=PixelFormat.NV12, source_id="s"))
    assert len(frames) == len(reference)
    height = found.info.height
    for frame, (nv12, _, pts) in zip(frames, reference, strict=True):
        assert frame.image.device.type == "cuda" and frame.image.dtype == torch.uint8
        assert tuple(frame.image.shape) == nv12.shape
        assert psnr(frame.image[:height], nv12[:height]) >= 40  # Y plane
        assert frame.pts == pts
    assert [f.index for f in frames] == list(range(len(frames)))


@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("name", list(CLIPS))
def test_file_decoder_nv12_matches_pyav(
    clips: dict[str, Path], name: str, threaded: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = clips[name]
    reference = pyav_frames(path)
    found = probe(path)
    with caplog.at_level(logging.WARNING, logger="streamflow.video.nvdec"):
        decoder = NvdecFileDecoder(path, found, output=PixelFormat.NV12, batch_size=4, threaded=threaded)
    # SimpleDecoder's index is exact only in MP4/MOV: an MKV asked for it gets ThreadedDecoder and a warning.
    mp4 = path.suffix == ".mp4"
    assert decoder.threaded is (threaded or not mp4)
    assert any("SimpleDecoder" in r.getMessage() for r in caplog.records) is (not threaded and not mp4)
    frames = [f for batch in decoder.batches() for f in batch]
    assert len(frames) == len(reference)
    period = 1 / float(found.info.fps or 30)
    for frame, (nv12, _, pts) in zip(frames, reference, strict=True):
        assert tuple(frame.image.shape) == nv12.shape
        assert psnr(frame.image[: found.info.height], nv12[: found.info.height]) >= 40
        if decoder.threaded:
            assert frame.pts == pts, "ThreadedDecoder's getPTS() is the stream's pts"
        else:  # SimpleDecoder's getPTS() is off by the reorder delay: frames are numbered at the nominal rate
            assert pts is not None
            assert frame.time == pytest.approx(float(pts * found.info.time_base), abs=period / 2)


@pytest.mark.parametrize("name", ["h264", "hevc", "h264_1918x1078"])
def test_rgb_outputs_match_pyav(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    reference = pyav_frames(path)
    found = probe(path)
    rgb_frames = [f for b in NvdecFileDecoder(path, found, output=PixelFormat.RGB, batch_size=4).batches() for f in b]
    nv12_frames = list(packet_decode_frames(path, found, output=PixelFormat.NV12))
    assert len(rgb_frames) == len(nv12_frames) == len(reference)
    decoder_side = min(psnr(f.image, ref) for f, (_, ref, _) in zip(rgb_frames, reference, strict=True))
    ours = min(psnr(nv12_to_rgb(f.image), ref) for f, (_, ref, _) in zip(nv12_frames, reference, strict=True))
    print(f"{name}: min RGB PSNR vs PyAV: decoder-side {decoder_side:.2f} dB, nv12_to_rgb {ours:.2f} dB")
    assert ours >= 40
    assert decoder_side >= 40


def test_frames_are_owned_not_pool_views(clips: dict[str, Path]) -> None:
    path = clips["h264"]
    reference = pyav_frames(path)
    found = probe(path)
    kept = [f for b in NvdecFileDecoder(path, found, output=PixelFormat.NV12, batch_size=2).batches() for f in b]
    # Later batches reuse the decoder's pool; the frames kept from early batches must be intact.
    assert psnr(kept[0].image[:240], reference[0][0][:240]) >= 40
    pairs = decode_packets(PacketDecoder("h264"), path)
    assert len(pairs) == len(reference)
    assert psnr(pairs[0][0][:240], reference[0][0][:240]) >= 40


def test_resolution_change_mid_stream(clips: dict[str, Path]) -> None:
    path = clips["change"]
    reference = pyav_frames(path)
    stats: dict[str, int] = {}
    frames = list(packet_decode_frames(path, probe(path), output=PixelFormat.NV12, stats=stats))
    sizes = [(f.info.width, f.info.height) for f in frames if f.info is not None]
    assert sizes == [(320, 240)] * 5 + [(480, 272)] * 5
    assert [tuple(f.image.shape) for f in frames] == [(360, 320)] * 5 + [(408, 480)] * 5
    # The new sequence is decoded at its own size, not scaled into the old one.
    for frame, (nv12, _, _) in zip(frames, reference, strict=True):
        height = nv12.shape[0] * 2 // 3
        assert psnr(frame.image[:height], nv12[:height]) >= 40
    assert stats["resolution_changes"] == 1


def test_packet_decoder_opens_a_session_per_size(tmp_path: Path) -> None:
    path = write_resolution_change(
        tmp_path / "c.hevc", [(320, 240), (480, 272), (320, 240)], frames_each=3, codec="hevc"
    )
    decoder = PacketDecoder("hevc")
    pairs = decode_packets(decoder, path)
    assert [tuple(nv12.shape) for nv12, _ in pairs] == [(360, 320)] * 3 + [(408, 480)] * 3 + [(360, 320)] * 3
    assert decoder.sessions == 3 and decoder.size == (320, 240)


def test_unsupported_streams_are_named(clips: dict[str, Path]) -> None:
    assert nvdec_unsupported_reason(probe(clips["mpeg4"])) == "NVDEC does not decode mpeg4"
    assert nvdec_unsupported_reason(probe(clips["h264"])) is None
    with pytest.raises(NvdecError, match="mpeg4"):
        PacketDecoder("mpeg4")


def test_decode_stage_on_gpu(clips: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    from stages.decode import Decode
    from streamflow import Pipeline
    from streamflow.testing import ListSink
    from streamflow.video.probe import VideoInputError

    for fmt, batch in (("rgb", 4), ("nv12", 1)):
        sink = ListSink()
        Pipeline(
            [Decode(uri=str(clips["h264"]), format=fmt, emit_batch=batch, name="cam"), sink], device="cuda"
        ).run_sync()
        assert len(sink.frames) == 30
        assert all(f.image.is_cuda for f in sink.frames)
        assert sink.frames[0].format.value == fmt
    # Raw Annex B file: the packet path.
    sink = ListSink()
    Pipeline([Decode(uri=str(clips["change"]), format="nv12", name="raw"), sink], device="cuda").run_sync()
    assert len(sink.frames) == 10
    # mpeg4 falls back to PyAV with one warning; explicit nvdec fails with one line.
    sink = ListSink()
    with caplog.at_level(logging.WARNING):
        Pipeline([Decode(uri=str(clips["mpeg4"]), name="old"), sink], device="cuda").run_sync()
    assert len(sink.frames) == 4 and sink.frames[0].image.is_cuda
    assert any("NVDEC does not decode mpeg4" in r.getMessage() for r in caplog.records)
    with pytest.raises(VideoInputError, match=r"mpeg4.mp4.*NVDEC does not decode mpeg4"):
        Pipeline([Decode(uri=str(clips["mpeg4"]), backend="nvdec", name="old"), ListSink()], device="cuda").run_sync()
