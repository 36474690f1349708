from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamflow.config import ConfigError, build_pipeline, load_config, parse_override

SOURCE = "support.stages:CountingSource"
SINK = "support.stages:LinesSink"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def valid(tmp_path: Path) -> str:
    return f"""
name: demo
device: cpu
queue_size: 3
stages:
  - name: source
    type: {SOURCE}
    count: 5
  - name: writer
    type: {SINK}
    path: {tmp_path / "out.jsonl"}
    queue_size: 7
"""


def test_valid_config_builds_a_pipeline_with_runner_settings(tmp_path: Path) -> None:
    pipeline = build_pipeline(write(tmp_path, valid(tmp_path)))
    assert [s.name for s in pipeline.stages] == ["source", "writer"]
    assert pipeline.queue_size == 3 and pipeline.stages[1].queue_size == 7
    pipeline.run_sync()
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 5 + 1


def test_environment_variables_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMES", "9")
    text = valid(tmp_path).replace("count: 5", "count: ${FRAMES}\n    interval: ${GAP:-0.0}")
    config = load_config(write(tmp_path, text))
    assert config.stages[0].options == {"count": "9", "interval": "0.0"}
    assert build_pipeline(config).stages[0].config.count == 9


def test_missing_environment_variable_without_default_is_an_error(tmp_path: Path) -> None:
    text = valid(tmp_path).replace("count: 5", "count: ${STREAMFLOW_SURELY_UNSET}")
    with pytest.raises(ConfigError, match="STREAMFLOW_SURELY_UNSET"):
        load_config(write(tmp_path, text))


def test_overrides_set_stage_fields(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, valid(tmp_path)), ["source.count=2", "writer.queue_size=1"])
    pipeline = build_pipeline(config)
    assert pipeline.stages[0].config.count == 2 and pipeline.stages[1].queue_size == 1
    assert parse_override("a.b.c=[1, 2]") == ("a", ["b", "c"], [1, 2])
    with pytest.raises(ConfigError, match="did you mean 'source'"):
        load_config(write(tmp_path, valid(tmp_path)), ["sorce.count=2"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace(SOURCE, "decdoe"), r"stage 'source': field 'type': unknown stage type 'decdoe'"),
        (
            lambda t: t.replace("count: 5", "cuont: 5"),
            r"stage 'source' \(support.stages:CountingSource\): field 'cuont': unknown option; did you mean 'count'\?",
        ),
        (lambda t: t.replace("count: 5", "count: many"), r"stage 'source' .*field 'count': .*integer"),
        (lambda t: t.replace("name: writer", "name: source"), r"stage 'source': field 'name': duplicate stage name"),
        (lambda t: t.replace("queue_size: 7", "queue_size: 0"), r"stage 'writer': field 'queue_size'"),
        (
            lambda t: t.replace("queue_size: 3", "queue_sise: 3"),
            r"field 'queue_sise': unknown option; did you mean 'queue_size'",
        ),
        (
            lambda t: t.replace("    type: " + SINK, "    kind: x"),
            r"stage 'writer': field 'type': missing required key",
        ),
        (lambda t: t + "  - [oops\n", r"invalid YAML: line"),
    ],
)
def test_invalid_configs_give_one_line_errors_naming_file_stage_and_field(tmp_path: Path, change, expected) -> None:
    path = write(tmp_path, change(valid(tmp_path)))
    with pytest.raises(ConfigError, match=expected) as caught:
        build_pipeline(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


BRIGHTEN = """
from streamflow import Stage, StageConfig


class {name}(Stage):
    class Config(StageConfig):
        amount: int = 10

    def process(self, item):
        for frame in item.frames:
            frame.image = frame.image + self.config.amount
        return item
"""


def _module_config(folder: Path, module: str, cls: str) -> Path:
    return write(
        folder,
        f"""
name: custom
device: cpu
stages:
  - name: source
    type: {SOURCE}
    count: 3
  - name: brighten
    type: {module}:{cls}
    amount: 7
  - name: sink
    type: discard
""",
    )


@pytest.mark.parametrize("where", ["config folder", "working directory"])
def test_module_class_types_are_found_beside_the_config_and_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """`type: mymodule:Class` without PYTHONPATH: the module sits next to the config, or in the cwd."""
    module = f"brighten_{where.split()[0]}"  # a module name no other test imports
    configs, elsewhere = tmp_path / "configs", tmp_path / "elsewhere"
    configs.mkdir()
    elsewhere.mkdir()
    home = configs if where == "config folder" else elsewhere
    (home / f"{module}.py").write_text(BRIGHTEN.format(name="Brighten"))
    monkeypatch.chdir(elsewhere)
    pipeline = build_pipeline(_module_config(configs, module, "Brighten"))
    stage = pipeline.stages[1]
    assert type(stage).__name__ == "Brighten" and stage.config.amount == 7  # type: ignore[attr-defined]
    stats = pipeline.run_sync()
    assert stats.stage("brighten").frames_in == 3
    assert str(home) not in sys.path  # the folder was on the path only for the import


def test_a_module_found_nowhere_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"stage 'brighten'.*cannot import module 'no_such_module'.*looked on"):
        build_pipeline(_module_config(tmp_path, "no_such_module", "Brighten"))


def test_unquoted_null_type_says_to_write_discard(tmp_path: Path) -> None:
    text = valid(tmp_path).replace(f"type: {SINK}\n    path: {tmp_path / 'out.jsonl'}", "type: null")
    with pytest.raises(ConfigError, match=r"stage 'writer'.*field 'type'.*`type: discard`"):
        load_config(write(tmp_path, text))
    quoted = text.replace("type: null", 'type: "null"')  # old configs that quoted it keep working
    assert type(build_pipeline(write(tmp_path, quoted)).stages[-1]).__name__ == "NullSink"
