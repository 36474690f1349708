"""Tests of streamflow.video (a package so its module names do not clash with tests/stages)."""
