"""The `cluster:` section and `--ray` on the command line (no Ray needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamflow.cli.app import _bare_ray_flag, app
from streamflow.cluster import ClusterConfig
from streamflow.config import ConfigError, load_config


@pytest.fixture(autouse=True)
def _keep_root_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI points the root logger at CliRunner's stderr, closed after each call: restore it after."""
    monkeypatch.setattr(logging.getLogger(), "handlers", list(logging.getLogger().handlers))


def write(tmp_path: Path, cluster: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        "stages:\n  - {name: cam, type: decode}\n  - {name: out, type: 'null'}\n"
        "sources: [{id: a, uri: a.mp4}]\n" + cluster
    )
    return path


def test_cluster_section_is_validated_with_the_field_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "cluster: {address: auto, actors: 2, gpus_per_actor: 0.5}\n"))
    assert config.cluster == ClusterConfig(address="auto", actors=2, gpus_per_actor=0.5)
    with pytest.raises(ConfigError, match="actorz"):
        load_config(write(tmp_path, "cluster: {actorz: 2}\n"))
    with pytest.raises(ConfigError, match="dead_after_s"):
        load_config(write(tmp_path, "cluster: {dead_after_s: 0}\n"))


def test_a_bare_ray_flag_means_a_local_cluster() -> None:
    assert _bare_ray_flag(["run", "p.yaml", "--ray"]) == ["run", "p.yaml", "--ray", "local"]
    assert _bare_ray_flag(["run", "--ray", "p.yaml"]) == ["run", "--ray", "local", "p.yaml"]
    assert _bare_ray_flag(["run", "p.yaml", "--ray", "-q"]) == ["run", "p.yaml", "--ray", "local", "-q"]
    assert _bare_ray_flag(["run", "p.yaml", "--ray", "10.0.0.5:6379"]) == ["run", "p.yaml", "--ray", "10.0.0.5:6379"]


def test_a_cluster_run_without_sources_is_a_usage_error(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"")
    path = tmp_path / "one.yaml"
    path.write_text(f"stages:\n  - {{name: cam, type: decode, uri: {clip}}}\n  - {{name: out, type: 'null'}}\n")
    result = CliRunner().invoke(app, ["run", str(path), "--ray", "local"])
    assert result.exit_code == 2
    assert "sources" in result.output


def test_a_cluster_run_needs_per_source_file_paths(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"")
    path = tmp_path / "p.yaml"
    path.write_text(
        "stages:\n  - {name: cam, type: decode}\n  - {name: out, type: jsonl, path: out/all.jsonl}\n"
        f"sources: [{{id: a, uri: {clip}}}]\n"
    )
    result = CliRunner().invoke(app, ["run", str(path), "--ray", "local"])
    assert result.exit_code == 2
    assert "stage 'out'" in result.output and "{source}" in result.output
