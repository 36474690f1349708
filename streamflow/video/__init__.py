"""Video input and output: probing, CPU decode (PyAV), NVDEC decode, encode, synthetic test clips.

GPU modules import PyNvVideoCodec lazily, so everything here imports on CPU-only machines.

Example:
    >>> from streamflow.video import PyAVDecoder, VideoWriter, probe, write_clip
    >>> callable(probe) and callable(write_clip)
    True
"""

from streamflow.video.encode import EncodeBackend, EncodeError, VideoCodec, VideoWriter, nvenc_probe
from streamflow.video.probe import Probe, VideoInputError, probe
from streamflow.video.pyav_decode import PyAVDecoder
from streamflow.video.synth import write_clip

__all__ = [
    "EncodeBackend",
    "EncodeError",
    "Probe",
    "PyAVDecoder",
    "VideoCodec",
    "VideoInputError",
    "VideoWriter",
    "nvenc_probe",
    "probe",
    "write_clip",
]
