"""The engine stands alone: no module under ``hoptrace.core`` imports one outside it.

A static check over the source (every ``import`` statement, including those inside functions
and under ``TYPE_CHECKING``), so it holds whatever is imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hoptrace.core

CORE = Path(hoptrace.core.__file__).resolve().parent

#: The compiled C module stands in for parts of ``core.propagation`` (the common case of
#: ``inject`` / ``extract``); it imports nothing from hoptrace. It is built at the top of the
#: package (hatch_build.py), so its import path is the one exception.
ALLOWED_OUTSIDE = frozenset({"hoptrace._speedups"})


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every absolute module name an import statement in ``tree`` names, with its line."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "hoptrace":
                # ``from hoptrace import x`` / ``from .. import x``: x may be a module.
                found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, target))
    return found


def outside_imports(root: Path = CORE) -> list[str]:
    """``file:line imports name`` for each hoptrace module outside core that core imports."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, name in _imported(tree, module, path.name == "__init__.py"):
            in_package = name == "hoptrace" or name.startswith("hoptrace.")
            in_core = name == "hoptrace.core" or name.startswith("hoptrace.core.")
            if in_package and not in_core and name not in ALLOWED_OUTSIDE:
                problems.append(f"{path.relative_to(root)}:{line} imports {name}")
    return problems


def test_core_imports_nothing_from_the_package_around_it() -> None:
    assert outside_imports() == []


def test_the_check_sees_relative_absolute_and_nested_imports(tmp_path: Path) -> None:
    fake = tmp_path / "hoptrace" / "core"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text(
        "from .. import _config\n"
        "from ..kombu import X\n"
        "import hoptrace.pika\n"
        "from . import semconv\n"
        "from .hop import consume_scope\n"
        "import hoptrace.core.hop\n"
        "from .. import _speedups\n"
        "def f():\n"
        "    from hoptrace import celery\n"
    )
    assert outside_imports(fake) == [
        "a.py:1 imports hoptrace._config",
        "a.py:2 imports hoptrace.kombu",
        "a.py:3 imports hoptrace.pika",
        "a.py:9 imports hoptrace.celery",
    ]
