"""Time and peak memory of `load_config` on hostile configs (issue 17, item 4).

Each case runs in its own child process (so one case's memory can't hide another's) with a time
limit; the child reports the seconds `load_config` took, the growth of its peak RSS over the
imports, and the first line of what came out.

    python benchmarks/config_bombs.py              # the code on sys.path
    PYTHONPATH=/path/to/old/tree python benchmarks/config_bombs.py   # another version, to compare
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

LIMIT_S = 60

_CHILD = """
import json, resource, sys, time
from streamflow.config import load_config
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    load_config(sys.argv[1])
    outcome = "accepted"
except BaseException as error:
    outcome = f"{type(error).__name__}: {str(error).splitlines()[0][:90] if str(error) else ''}"
elapsed = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"seconds": elapsed, "peak_mib": peak / 1024, "outcome": outcome}))
"""


def write_cases(folder: Path) -> dict[str, Path]:
    """The hostile configs, written into `folder`."""
    cases: dict[str, str] = {}
    laughs = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    laughs += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    cases["billion laughs (9 levels of 9 aliases)"] = (
        "name: t\n" + "\n".join(laughs) + "\nstages:\n  - {name: s, type: discard, extra: *l8}\n"
    )
    cases["recursive anchor"] = "name: t\nstages: &s\n  - {name: s, type: discard, extra: *s}\n"
    cases["100,000 nested brackets"] = "name: t\nstages: " + "[" * 100_000 + "]" * 100_000 + "\n"
    cases["10 MB, 300k stages"] = "name: t\nstages:\n" + "".join(
        f"  - {{name: stage{i:06d}, type: discard}}\n" for i in range(300_000)
    )
    cases["16k stages (duplicate-name check)"] = "name: t\nstages:\n" + "".join(
        f"  - {{name: s{i}, type: discard}}\n" for i in range(16_000)
    )
    cases["5,000 stages (under the size limit)"] = "name: t\nstages:\n" + "".join(
        f"- {{name: s{i}, type: x}}\n" for i in range(5_000)
    )
    cases["1,000 stages, the last name repeated"] = "name: t\nstages:\n" + "".join(
        f"- {{name: s{min(i, 998)}, type: x}}\n" for i in range(1_000)
    )
    cases["duplicate mapping key"] = "name: t\nstages:\n  - name: a\n    type: discard\n    type: decode\n"
    paths: dict[str, Path] = {}
    for index, (label, text) in enumerate(cases.items()):
        paths[label] = folder / f"case{index}.yaml"
        paths[label].write_text(text)
    return paths


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in write_cases(Path(tmp)).items():
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            try:
                stdout, _ = child.communicate(timeout=LIMIT_S)
                result = json.loads(stdout.strip().splitlines()[-1])
                line = f"{result['seconds']:.2f} s, {result['peak_mib']:.0f} MiB, {result['outcome']}"
            except subprocess.TimeoutExpired:
                line = f"> {LIMIT_S} s (killed), {_peak_mib(child.pid):.0f} MiB peak RSS of the whole process"
                child.kill()
                child.communicate()
            print(f"{label:40s} {line}", flush=True)


if __name__ == "__main__":
    main()
