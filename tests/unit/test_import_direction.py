"""What the attached SAE means flows one way: `sae` knows nothing of the packages that
depend on it (steering, monitoring, profiles, training, the servicers), and monitoring
knows nothing of steering or profiles. A cycle here is how attach consequences end up
split between packages again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "inference_service"

# package -> packages of inference_service it must never import
FORBIDDEN = {
    "sae": ("steering", "monitoring", "profiles", "training", "servicers", "server"),
    "monitoring": ("steering", "profiles", "sae", "servicers", "server"),
    "steering": ("profiles", "servicers", "server"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up(package: str) -> None:
    banned = tuple(f"inference_service.{name}" for name in FORBIDDEN[package])
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    offending = {
        f"{path.relative_to(PACKAGE.parent)} imports {module}"
        for path in files
        for module in imported_modules(path)
        if module in banned or module.startswith(tuple(f"{b}." for b in banned))
    }
    assert not offending, sorted(offending)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from inference_service.steering.state import SteeringState\n"
        "def f():\n    import inference_service.profiles\n"
    )
    assert {"inference_service.steering.state", "inference_service.profiles"} <= imported_modules(
        source
    )
