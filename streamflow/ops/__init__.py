"""Reusable tensor operations (colour conversion) shared by stages."""

from streamflow.ops.color import ColorMatrix, nv12_to_rgb, nv12_to_yuv, rgb_to_nv12, yuv420_to_nv12

__all__ = ["ColorMatrix", "nv12_to_rgb", "nv12_to_yuv", "rgb_to_nv12", "yuv420_to_nv12"]
