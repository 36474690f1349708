"""Fixtures for inference tests: a small ONNX model exported by torch, and the CenterFace model."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.onnx_models import CENTERFACE, export_small_model


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_model(tmp_path_factory.mktemp("models") / "small.onnx")


@pytest.fixture(scope="session")
def centerface() -> Path:
    if not CENTERFACE.is_file():
        pytest.skip(f"{CENTERFACE} is not in the repository")
    return CENTERFACE
