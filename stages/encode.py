"""`encode`: write frames to an MP4/MKV file (NVENC where it exists, else libx264/libx265 on the CPU).

Takes RGB or NV12 frames (CPU or CUDA) and writes them in arrival order with their pts, so the file
has the input's frame count and duration. With `backend: auto` NVENC is used when a session opens
on the stage's GPU (probed once per process); H100/H200/A100 and CPU machines get PyAV with one
warning line naming why. GPU frames are copied to pinned host memory on the stage's stream, with one
host wait per batch. On the CPU, `encoders: N` cuts the video into closed segments of
`segment_seconds` (each starts with a keyframe) encoded by N libx264 encoders in parallel and muxed
in order: one libx264 leaves most of a many-core machine idle. `cpu_encoder: process` runs the
encoder(s) in child processes instead, each with its own GIL (one child finalizes the file even if
this process dies; with `encoders: N` the children encode segments and this process muxes them).
The `encoder_wait_ms` counter says how long the stage waited for busy encoders. The file is
finalized at end of stream and also after an error or SIGINT (teardown). MP4 is written fragmented
(a fragment at each keyframe and at least once a second), so even a killed process, a power cut or
a full disk leaves a file that plays up to its last fragment. Missing folders of `path` are created.
Items are passed on unchanged, so a `jsonl` sink may follow. With many sources the path must hold
`{source}` (`out/{source}.mp4`): one file per source, finalized when that source ends (also when it
fails or is removed) while the others go on.

Example (YAML):
    - name: out
      type: encode
      path: out.mp4
      codec: h264        # or hevc
      crf: 23            # or bitrate: 4000000
      preset: veryfast
      backend: auto      # auto | nvenc | cpu
      encoders: 1        # CPU: parallel segment encoders (2-4 on a many-core machine)
      segment_seconds: 2 # CPU, encoders > 1: keyframe interval = segment length
      cpu_encoder: thread  # thread | process: CPU encoder(s) in this process or in child processes

Example (Python):
    >>> import tempfile, pathlib
    >>> from streamflow.testing import make_frames, run_stage
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "o.mp4"
    >>> _ = run_stage(Encode(path=str(path), backend="cpu"), make_frames(3, height=16, width=16))
    >>> path.stat().st_size > 0
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from streamflow.frame import Batch, Frame
from streamflow.per_source import PerSourceOutputs, check_path_template
from streamflow.preflight import ensure_output_folder
from streamflow.stage import Stage, StageConfig, StageOutput
from streamflow.video.encode import CpuEncoderMode, EncodeBackend, EncodeError, VideoCodec, VideoWriter

__all__ = ["Encode"]


class Encode(Stage):
    """Encode every frame into `path`; see the module docstring."""

    class Config(StageConfig):
        path: str = Field(min_length=1, description="may hold {source}: one file per source")
        codec: VideoCodec = VideoCodec.H264
        bitrate: int | None = Field(default=None, ge=1, description="bits per second")
        crf: int | None = Field(default=None, ge=0, le=51)
        preset: str | None = None
        fps: float | None = Field(default=None, gt=0, description="default: the input's frame rate")
        backend: EncodeBackend = EncodeBackend.AUTO
        cpu_encoder: CpuEncoderMode = Field(
            CpuEncoderMode.THREAD,
            description="CPU encoder(s) in this process's threads or in child processes (a GIL each)",
        )
        encoders: int = Field(1, ge=1, le=16, description="CPU: encoders working on segments in parallel")
        segment_seconds: float = Field(2.0, gt=0, description="CPU, encoders > 1: segment and keyframe interval")
        slots: int = Field(8, ge=1, le=256, description="cpu_encoder process: frames each child's ring holds")

        @model_validator(mode="after")
        def _one_rate_control(self) -> Encode.Config:
            if self.bitrate is not None and self.crf is not None:
                raise ValueError("set either bitrate or crf, not both")
            if Path(self.path).suffix.lower() not in (".mp4", ".m4v", ".mov", ".mkv"):
                raise ValueError(f"path {self.path!r} must end in .mp4 or .mkv")
            check_path_template(self.path)
            return self

    uses_gpu: ClassVar[bool] = True
    output_path_fields: ClassVar[tuple[str, ...]] = ("path",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writers = PerSourceOutputs[VideoWriter](
            self.config.path,
            open_writer=self._refuse_open,
            close_writer=self._close_writer,
            owner=f"stage {self.name!r}",
        )
        self._source: str | None = None  # the one source a path without {source} takes
        self._reported_wait: dict[VideoWriter, int] = {}

    def setup(self) -> None:
        # The runner's preflight did this already; a stage used on its own gets the same folders
        # (a per-source path's folders are made as each source's file opens).
        if not self.writers.per_source:
            ensure_output_folder(self.config.path, owner=f"stage {self.name!r}")

    def _writer_for(self, frame: Frame) -> VideoWriter:
        if not self.writers.per_source:
            if self._source is None:
                self._source = frame.source_id
            elif frame.source_id != self._source:
                # Two sources in one file would mix sizes and timelines: say how to split them.
                raise EncodeError(
                    f"frames of sources {self._source!r} and {frame.source_id!r} reach one file "
                    f"{self.config.path!r}: put {{source}} in the path (out/{{source}}.mp4)"
                )
        return self.writers.writer(frame.source_id, lambda path: self._open(path, frame))

    def _open(self, path: str, frame: Frame) -> VideoWriter:
        config = self.config
        fps = config.fps or (frame.info.fps if frame.info is not None else None)
        return VideoWriter(
            path,
            fps=fps,
            codec=config.codec,
            crf=config.crf,
            bitrate=config.bitrate,
            preset=config.preset,
            backend=config.backend,
            gpu_id=self.device.index if self.on_gpu else None,
            cpu_encoder=config.cpu_encoder,
            encoders=config.encoders,
            segment_seconds=config.segment_seconds,
            slots=config.slots,
        )

    @staticmethod
    def _refuse_open(path: str) -> VideoWriter:
        raise AssertionError("writers open through _writer_for, which knows the frame rate")

    def process(self, item: Frame | Batch) -> StageOutput:
        frames = item.frames
        start = 0
        # A batch may mix sources: each run of one source's frames goes to that source's writer.
        for end in range(1, len(frames) + 1):
            if end == len(frames) or frames[end].source_id != frames[start].source_id:
                writer = self._writer_for(frames[start])
                writer.write_batch([(f.image, f.format, f.pts, f.time_base) for f in frames[start:end]])
                blocked = writer.encoder_blocked_s
                if blocked is not None:  # segment encoders: how long this stage waited for them, in total
                    self.count("encoder_wait_ms", round(1000 * blocked) - self._reported_wait.get(writer, 0))
                    self._reported_wait[writer] = round(1000 * blocked)
                start = end
        self.count("frames_written", len(frames))
        return item

    def end_source(self, source_id: str) -> StageOutput:
        self.writers.close(source_id)
        return None

    def flush(self) -> StageOutput:
        self.writers.close_all()
        return None

    def teardown(self) -> None:
        # Finalize also after errors and SIGINT: an unfinished MP4 has no index and won't play.
        self.writers.close_all()

    def _close_writer(self, writer: VideoWriter) -> None:
        self._reported_wait.pop(writer, None)
        writer.close()
        if writer.backend is not None:
            # Each writer is closed once (PerSourceOutputs forgets it first): its frames add up.
            where = "with_nvenc" if writer.backend.value == "nvenc" else "on_cpu"
            self.count(f"encoded_{where}", writer.frames)
