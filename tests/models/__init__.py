"""Tests of streamflow.models (a package so its module names do not clash with tests/stages)."""
