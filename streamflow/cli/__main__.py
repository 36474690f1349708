"""`python -m streamflow.cli ...` runs the `streamflow` command."""

from streamflow.cli.app import main

main()
