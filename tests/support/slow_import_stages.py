"""A stage module that takes long to import (like one importing a big framework), so a test can
send Ctrl-C while `streamflow run` is still starting. It creates $STREAMFLOW_TEST_MARKER first."""

from __future__ import annotations

import os
import time
from pathlib import Path

from streamflow import Stage

Path(os.environ["STREAMFLOW_TEST_MARKER"]).touch()
time.sleep(float(os.environ.get("STREAMFLOW_TEST_IMPORT_S", "30")))


class Slow(Stage):
    """Passes frames on."""
