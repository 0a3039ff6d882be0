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
    # Publishers hand their own payloads in; the bus knows none of them.
    "events": (
        "sae",
        "steering",
        "monitoring",
        "profiles",
        "training",
        "operations",
        "host",
        "servicers",
        "server",
    ),
}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`. The architecture modules hold each
    architecture's training math and annotate the trainable module training hands
    them; such an import never runs, so it cannot tie the packages together."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for stmt in node.body
        for inner in ast.walk(stmt)
    }


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports at run time, at any depth (function-level imports
    included, annotation-only ones not)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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
        "if TYPE_CHECKING:\n    from inference_service.training import trainable\n"
    )
    found = imported_modules(source)
    assert {"inference_service.steering.state", "inference_service.profiles"} <= found
    assert "inference_service.training" not in found
