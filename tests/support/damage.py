"""Damage media files where a test means to: inside packets found by demuxing, at header offsets
before the first packet, at packet boundaries. Nothing depends on where an encoder's bytes happen
to fall, so the same damage lands on the same packets on any machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av


@dataclass(frozen=True, slots=True)
class Span:
    """Where one video packet's bytes sit in the file."""

    pos: int
    size: int

    @property
    def middle(self) -> int:
        return self.pos + self.size // 2


def packet_spans(path: Path) -> list[Span]:
    """The file positions of the video packets, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [Span(int(p.pos), int(p.size)) for p in container.demux(stream) if p.size and p.pos is not None]


def truncated(data: bytes, length: int) -> bytes:
    return data[:length]


def zeroed(data: bytes, start: int, length: int) -> bytes:
    return data[:start] + bytes(min(length, len(data) - start)) + data[start + length :]


def flipped(data: bytes, offset: int) -> bytes:
    """Every bit of one byte inverted."""
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def variants(clip: Path) -> dict[str, bytes]:
    """Damaged copies of `clip`, by name: truncations, zeroed ranges, byte flips, header damage."""
    data = clip.read_bytes()
    spans = packet_spans(clip)
    header = spans[0].pos  # bytes before the first packet: the container header (0 for raw Annex B)
    out: dict[str, bytes] = {}
    for index in (1, 3, len(spans) // 2, len(spans) - 2):
        out[f"cut before packet {index}"] = truncated(data, spans[index].pos)
    out["cut inside packet 4"] = truncated(data, spans[4].middle)
    out["cut inside the header"] = truncated(data, max(8, header // 2))
    out["zeroed keyframe 0"] = zeroed(data, spans[0].pos, spans[0].size)
    out["zeroed packet 2"] = zeroed(data, spans[2].pos, spans[2].size)
    out["zeroed packets 5-6"] = zeroed(data, spans[5].pos, spans[6].pos + spans[6].size - spans[5].pos)
    for index in (1, 3, 5):
        out[f"flip inside packet {index}"] = flipped(data, spans[index].middle)
    # Raw Annex B has no container header: its parameter sets open the first packet.
    for fraction in (3, 2):
        offset = header // fraction if header else spans[0].size // (fraction * 8)
        out[f"flip header byte {offset}"] = flipped(data, max(4, offset))
    out["zeroed first 8 bytes"] = zeroed(data, 0, 8)
    out["zeroed first 64 bytes"] = zeroed(data, 0, 64)
    return out
