"""The repository's scripts outside any package (training/, benchmarks/), imported by path for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(relative_path: str) -> ModuleType:
    """The module of `ROOT / relative_path`, imported once under its file's stem.

    The stem is the name the scripts use for each other (benchmarks/sr_quality.py loads
    training/train_sr.py as `train_sr`), so every caller gets the same module object.
    """
    path = ROOT / relative_path
    name = path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module
