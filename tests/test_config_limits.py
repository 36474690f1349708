"""Hostile configs (issue 17 item 4, and the non-UTF-8 case of item 5): each is refused with one
`ConfigError` line, without exponential work, deep recursion or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import cli

from streamflow.config import MAX_CONFIG_BYTES, MAX_STAGES, ConfigError, load_config

STAGE = "  - {name: s, type: 'null'}\n"


def laughs(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "name: t\n" + "\n".join(lines) + f"\nstages:\n  - {{name: s, type: 'null', extra: *l{levels}}}\n"


CASES = {
    "billion laughs": (laughs(9), "expands to more than"),
    "recursive anchor": ("name: t\nstages: &s\n  - {name: s, type: 'null', extra: *s}\n", "recursive alias"),
    "deep brackets": ("name: t\nstages: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than"),
    "deep but parseable": ("name: t\nx: " + "[" * 200 + "]" * 200 + "\nstages:\n" + STAGE, "nested more than"),
    "too big": ("name: t\nstages:\n" + STAGE + "#" * MAX_CONFIG_BYTES + "\n", "the limit is"),
    "too many stages": (
        "name: t\nstages:\n" + "".join(f"- {{name: s{i}, type: x}}\n" for i in range(MAX_STAGES + 1)),
        f"{MAX_STAGES + 1} stages; the limit is {MAX_STAGES}",
    ),
    "duplicate stage names": (
        "name: t\nstages:\n" + "".join(f"- {{name: s{min(i, 998)}, type: x}}\n" for i in range(1000)),
        "stage 's998': field 'name': duplicate stage name",
    ),
    "duplicate key": (
        "name: t\nstages:\n  - name: a\n    type: 'null'\n    type: decode\n",
        "line 5, column 5: duplicate key 'type'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_configs_are_one_line_errors(tmp_path: Path, case: str) -> None:
    text, words = CASES[case]
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert words in message and message.startswith(str(path)) and "\n" not in message


def test_merge_keys_may_repeat_what_they_merge(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(
        "name: t\nstages:\n  - &b {name: a, type: 'null', batch_size: 2}\n  - {<<: *b, name: s, batch_size: 3}\n"
    )
    assert [stage.batch_size for stage in load_config(path).stages] == [2, 3]


def test_a_non_utf8_config_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\nstages:\n  - {name: s, type: 'null'}\n".encode("latin-1"))
    result = cli("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not UTF-8 text: byte 0xe9 at offset 9" in result.stderr and len(result.stderr.strip().splitlines()) == 1
