"""Read the picture size that a compressed packet announces, without decoding it.

NVDEC's in-place reconfigure keeps the output size of the first sequence and *scales* the pictures
of a later sequence of another size into it (the Video Codec SDK's `NvDecoder::ReconfigureDecoder`
leaves the display rectangle and target size alone unless the application asked for a new one
beforehand). A camera that switches from 320x240 to 480x272 would then come out as 320x240
pictures. `PacketDecoder` therefore looks at each packet's sequence header here, before NVDEC sees
it, and starts a new session when the size changes.

`sequence_size(codec, data)` returns the displayed `(width, height)` (cropping applied) from an
H.264 or HEVC sequence parameter set (Annex B packets) or a VP9 key frame header, or None when the
packet carries none. Only the start of the packet is read: parameter sets come before the first
slice of an access unit, and the scan stops at that slice.

Example:
    >>> sps = bytes.fromhex("000000016742c00dda0507e840000003004000000f03c50aa8")  # H.264 SPS of a 320x240 stream
    >>> sequence_size("h264", sps)
    (320, 240)
    >>> sequence_size("h264", bytes.fromhex("0000000165888404")) is None  # an IDR slice, no SPS
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["sequence_size"]

# Parameter sets, SEI and AUD come before the first slice; 8 KiB covers them (x264's SEI is ~700 bytes).
_HEAD_BYTES = 8192
_START_CODE = b"\x00\x00\x01"
# H.264 profiles whose SPS carries chroma format, bit depths and scaling lists (spec 7.3.2.1.1).
_H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class _Bits:
    """MSB-first bit reader over an RBSP, with the Exp-Golomb codes of H.264/HEVC."""

    __slots__ = ("_bits", "_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = int.from_bytes(data, "big")
        self._bits = len(data) * 8
        self._pos = 0

    def u(self, count: int) -> int:
        if count == 0:
            return 0
        end = self._pos + count
        if end > self._bits:
            raise ValueError("truncated header")
        value = (self._data >> (self._bits - end)) & ((1 << count) - 1)
        self._pos = end
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value % 2 else -(value // 2)


def _rbsp(payload: bytes) -> bytes:
    # Emulation prevention: the encoder inserted 0x03 after every 00 00 inside a NAL unit.
    return payload.replace(b"\x00\x00\x03", b"\x00\x00")


def _h264_sps_size(rbsp: bytes) -> tuple[int, int]:
    bits = _Bits(rbsp)
    profile = bits.u(8)
    bits.u(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    separate_planes = 0
    if profile in _H264_HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format == 3:
            separate_planes = bits.u(1)
        bits.ue()  # bit depths
        bits.ue()
        bits.u(1)  # qpprime_y_zero_transform_bypass
        if bits.u(1):  # seq_scaling_matrix_present
            for i in range(12 if chroma_format == 3 else 8):
                if bits.u(1):
                    last = following = 8
                    for _ in range(16 if i < 6 else 64):
                        if following:
                            following = (last + bits.se() + 256) % 256
                        last = following or last
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_allowed
    width = (bits.ue() + 1) * 16
    map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    height = map_units * 16 * (2 - frame_mbs_only)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field
    bits.u(1)  # direct_8x8_inference
    if bits.u(1):  # frame_cropping
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        if separate_planes or chroma_format == 0:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:
            unit_x = 2 if chroma_format in (1, 2) else 1
            unit_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    return width, height


def _hevc_sps_size(rbsp: bytes) -> tuple[int, int]:
    bits = _Bits(rbsp)
    bits.u(4)  # sps_video_parameter_set_id
    sub_layers = bits.u(3)  # sps_max_sub_layers_minus1
    bits.u(1)  # temporal_id_nesting
    bits.u(96)  # general profile (88 bits) and level (8 bits) of profile_tier_level()
    present = [(bits.u(1), bits.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        bits.u(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile_present, level_present in present:
        bits.u(88 * profile_present + 8 * level_present)
    bits.ue()  # sps_seq_parameter_set_id
    chroma_format = bits.ue()
    separate_planes = bits.u(1) if chroma_format == 3 else 0
    width, height = bits.ue(), bits.ue()
    if bits.u(1):  # conformance_window
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        unit_x = 2 if chroma_format in (1, 2) and not separate_planes else 1
        unit_y = 2 if chroma_format == 1 and not separate_planes else 1
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    return width, height


def _annexb_sps_size(head: bytes, hevc: bool) -> tuple[int, int] | None:
    pos = head.find(_START_CODE)
    while pos >= 0 and pos + 3 < len(head):
        start = pos + 3
        following = head.find(_START_CODE, start)
        if hevc:
            nal_type = (head[start] >> 1) & 0x3F
            is_sps, is_slice, header = nal_type == 33, nal_type < 32, 2
        else:
            nal_type = head[start] & 0x1F
            is_sps, is_slice, header = nal_type == 7, 1 <= nal_type <= 5, 1
        if is_slice:
            return None
        if is_sps:
            payload = _rbsp(head[start + header : following if following >= 0 else len(head)])
            return _hevc_sps_size(payload) if hevc else _h264_sps_size(payload)
        pos = following
    return None


def _vp9_keyframe_size(head: bytes) -> tuple[int, int] | None:
    bits = _Bits(head[:16])
    if bits.u(2) != 2:  # frame_marker
        return None
    profile = bits.u(1) | (bits.u(1) << 1)
    if profile == 3:
        bits.u(1)
    if bits.u(1):  # show_existing_frame: no header of its own
        return None
    if bits.u(1) != 0:  # frame_type: only key frames carry the size unconditionally
        return None
    bits.u(2)  # show_frame, error_resilient_mode
    if bits.u(24) != 0x498342:  # frame_sync_code
        return None
    if profile >= 2:
        bits.u(1)  # ten_or_twelve_bit
    if bits.u(3) != 7:  # color_space other than sRGB
        bits.u(1)  # color_range
        if profile in (1, 3):
            bits.u(3)  # subsampling_x, subsampling_y, reserved
    elif profile in (1, 3):
        bits.u(1)
    return bits.u(16) + 1, bits.u(16) + 1


def sequence_size(codec: str, data: bytes | bytearray | memoryview | np.ndarray) -> tuple[int, int] | None:
    """The `(width, height)` a packet's sequence header announces, or None if it has none.

    `codec` is FFmpeg's name (`h264`, `hevc`, `vp9`); H.264/HEVC packets must be Annex B (start
    codes). Other codecs, and headers that can't be parsed, give None: the caller then keeps the
    current size.

    Example:
        >>> sequence_size("mpeg4", b"\\x00\\x00\\x01\\xb0") is None
        True
    """
    head = bytes(data[:_HEAD_BYTES])
    try:
        if codec in ("h264", "hevc"):
            return _annexb_sps_size(head, hevc=codec == "hevc")
        if codec == "vp9":
            return _vp9_keyframe_size(head)
    except (ValueError, IndexError):
        return None
    return None
