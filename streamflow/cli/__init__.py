"""The application layer: the `streamflow` command and what only it uses (bench, report tables, the
engine builder's command, the cluster route). The library (`streamflow.*` outside this package) never
imports it; `tests/test_layering.py` checks that.

Example:
    >>> from streamflow.cli import app
    >>> app.info.name is None or isinstance(app.info.name, str)
    True
"""

from streamflow.cli.app import app, main

__all__ = ["app", "main"]
