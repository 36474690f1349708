"""The layering of the tree, checked statically (the source is parsed, nothing is imported).

- The core library `streamflow/` never imports `stages/`: stages plug into the core through the
  registry, so the core must work without them.
- The library (everything else in `streamflow/` and `stages/`) imports neither the application layer
  (command line, benchmark, report) nor `typer`/`rich`; it stays usable without a terminal UI.
  The application layer is one package, `streamflow/cli/`. The command line also starts the cluster
  route, which is why `streamflow/cli/cluster.py` lives there and not in `streamflow/cluster/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "streamflow"
STAGES = ROOT / "stages"

#: The package allowed to import the terminal-UI libraries (relative to the repository root).
APPLICATION_PACKAGE = "streamflow/cli"
UI_LIBRARIES = frozenset({"typer", "rich", "click"})


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in `path` under `root`, including those inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from streamflow import cli` imports the module streamflow.cli.
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names if alias.name != "*")
    return found


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


def violations(files: list[Path], forbidden: frozenset[str], root: Path = ROOT) -> list[str]:
    """One line per import statement that reaches a `forbidden` top-level package."""
    found: dict[tuple[Path, int], str] = {}
    for path in files:
        for line, module in imported_modules(path, root):
            if top_level(module) in forbidden:
                found.setdefault((path, line), f"{path.relative_to(root)}:{line}: imports {module}")
    return list(found.values())


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_scan_sees_the_tree() -> None:
    # Guards the checks below against passing vacuously (wrong root, nothing parsed).
    assert len(core_files()) > 20
    assert any(module == "streamflow.stage" for _, module in imported_modules(STAGES / "decode.py"))
    assert (ROOT / APPLICATION_PACKAGE / "__init__.py").is_file(), f"{APPLICATION_PACKAGE} is not a package"


def test_core_does_not_import_stages() -> None:
    assert violations(core_files(), frozenset({"stages"})) == []


def library_files() -> list[Path]:
    files = [*core_files(), *sorted(STAGES.rglob("*.py"))]
    return [path for path in files if not path.relative_to(ROOT).is_relative_to(APPLICATION_PACKAGE)]


def test_only_the_application_layer_imports_terminal_ui_libraries() -> None:
    assert violations(library_files(), UI_LIBRARIES) == []


def test_the_library_does_not_import_the_application_layer() -> None:
    application = APPLICATION_PACKAGE.replace("/", ".")
    found = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in library_files()
        for line, module in imported_modules(path)
        if module == application or module.startswith(application + ".")
    ]
    assert found == []


def test_relative_imports_resolve_to_their_package(tmp_path: Path) -> None:
    # A relative import must count as the module it names, or `from ..stages import x` would slip through.
    module = tmp_path / "streamflow" / "video" / "sample.py"
    module.parent.mkdir(parents=True)
    module.write_text("from .. import stage\nfrom ..stages import decode\nfrom . import probe\nimport typer.main\n")
    assert imported_modules(module, tmp_path) == [
        (1, "streamflow"),
        (1, "streamflow.stage"),
        (2, "streamflow.stages"),
        (2, "streamflow.stages.decode"),
        (3, "streamflow.video"),
        (3, "streamflow.video.probe"),
        (4, "typer.main"),
    ]
    assert violations([module], UI_LIBRARIES, tmp_path) == ["streamflow/video/sample.py:4: imports typer.main"]
    top = tmp_path / "streamflow" / "core.py"
    top.write_text("def later():\n    from stages.decode import Decode\n")
    assert violations([top], frozenset({"stages"}), tmp_path) == ["streamflow/core.py:2: imports stages.decode"]
