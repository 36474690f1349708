"""Seeded fuzz of the decode path (issue 17): damaged variants of small generated clips (MP4,
fast-start MP4, MKV, TS, raw Annex B) each run through a real pipeline (decode -> sink, CPU) with a
time limit. Every run must end with a clear one-line error or with an output whose frame
accounting adds up: the frames that reached the sink are what the source delivered, and when the
container states a count, what is missing is reported (expected, delivered, lost) in a warning.

The damage is chosen by demuxing (packet positions), not by random offsets, so it lands on the
same packets on any machine. Run with `-s` to see the table."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from pathlib import Path

import pytest

from stages.decode import Decode
from streamflow import Pipeline
from streamflow.testing import ListSink
from streamflow.video.probe import VideoInputError, probe
from streamflow.video.synth import write_clip
from support.damage import variants

CLIP_FRAMES = 12
TIME_LIMIT_S = 30.0  # per run; a healthy run of these clips takes a small fraction of a second
KINDS = {"mp4": ".mp4", "mp4 fast start": ".mp4", "mkv": ".mkv", "ts": ".ts", "annex b": ".h264"}
LOSS = re.compile(r"(?:states|implies \(from its duration\)) (\d+) frames, (\d+) delivered, (\d+) lost \((.+)\)$")


def damaged_inputs(folder: Path) -> list[tuple[str, Path]]:
    inputs = []
    for kind, suffix in KINDS.items():
        clip = write_clip(
            folder / f"clip{len(inputs)}{suffix}",
            width=64,
            height=48,
            frames=12,
            gop=4,
            faststart=kind.endswith("start"),
        )
        for name, data in variants(clip).items():
            path = folder / f"{kind.replace(' ', '_')}-{name.replace(' ', '_')}{suffix}"
            path.write_bytes(data)
            inputs.append((f"{kind}: {name}", path))
    return inputs


async def run_one(path: Path) -> tuple[str, str]:
    """(outcome, detail). Outcomes: clear_error, complete, partial_accounted (frames lost, and the
    warning's expected / delivered / lost add up), partial_unstated (frames lost where the damaged
    container states no count to compare with), unaccounted, hang, crash."""
    try:
        source = Decode(uri=str(path), name="src")
    except ValueError as error:  # the config refuses the input (one line, exit 2 from the CLI)
        return "clear_error", str(error).splitlines()[0]
    sink = ListSink()
    pipeline = Pipeline([source, sink], device="cpu", stop_timeout_s=5)
    try:
        stats = await asyncio.wait_for(pipeline.run(), TIME_LIMIT_S)
    except TimeoutError:
        return "hang", ""
    except VideoInputError as error:
        message = str(error)
        return ("clear_error" if "\n" not in message and str(path.name) in message else "crash"), message
    except Exception as error:
        return "crash", f"{type(error).__name__}: {error}"
    delivered = stats.stage("src").frames_out
    if len(sink.frames) != delivered:
        return "unaccounted", f"sink got {len(sink.frames)}, source delivered {delivered}"
    losses = [LOSS.search(line) for line in stats.warnings]
    found = [m for m in losses if m]
    try:
        stated = probe(path).info.frame_count
    except VideoInputError:
        stated = None
    if found:
        expected, said_delivered, lost = (int(found[0].group(i)) for i in (1, 2, 3))
        if said_delivered == delivered and expected - delivered == lost:
            return "partial_accounted", stats.warnings[0]
        return "unaccounted", stats.warnings[0]
    if stated is not None and delivered < stated - 1:
        return "unaccounted", f"{stated} stated, {delivered} delivered, no warning"
    if delivered < CLIP_FRAMES:
        # Raw Annex B states no count, and a cut TS's duration shrinks with it: nothing to compare.
        return "partial_unstated", f"{delivered} of {CLIP_FRAMES}; the damaged container states {stated}"
    return "complete", str(delivered)


def test_damaged_media_never_hang_crash_or_lose_frames_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = damaged_inputs(tmp_path)
    assert len(inputs) >= 50
    results: dict[str, tuple[str, str]] = {}
    with caplog.at_level(logging.WARNING):
        for label, path in inputs:
            results[label] = asyncio.run(run_one(path))
    tally = Counter(outcome for outcome, _ in results.values())
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    print(f"\nfuzz: {len(inputs)} inputs, " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    print(f"fuzz: tracebacks {len(tracebacks)}")
    for label, (outcome, detail) in results.items():
        print(f"  {label:45s} {outcome:18s} {detail[:110]}")
    bad = {label: r for label, r in results.items() if r[0] in ("hang", "crash", "unaccounted")}
    assert not bad, bad
    assert not tracebacks
    # The damage must matter: some runs fail clearly and some lose frames and say so.
    assert tally["clear_error"] >= 5 and tally["partial_accounted"] >= 5
