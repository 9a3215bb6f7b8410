"""The pure modules stay pure: no clock, no randomness, no I/O, no logging.

PURE is the one list of them; docs/architecture.md's module table must say
the same. Every import of a pure module is read from its source (ast: nothing
is imported, so no standard-library module's own imports count), followed
through every llmrouter module it reaches, including lazy imports inside
functions. A pure module may import only pure llmrouter modules and none of
FORBIDDEN.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llmrouter"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

# Paths under llmrouter/; "dir/" means every module of that package.
PURE = (
    "canonical.py",
    "formats/",
    "sse.py",
    "config.py",
    "errors.py",
    "classifiers.py",
    "router.py",
    "measure.py",
    "metrics.py",
    "plugins/",
    "pipeline.py",
    "commands.py",
    "events.py",
    "breaker.py",
    "redact.py",
    "eventtext.py",
    "tui_state.py",
    "replay.py",
    "init_template.py",
)
# Top-level names a pure module must not import: event loops, sockets, TLS,
# terminals, the clock, randomness, the environment and file system, logging.
FORBIDDEN = frozenset(
    "anyio asyncio h11 httpcore socket ssl select selectors curses logging time datetime uuid random secrets "
    "os subprocess threading signal".split()
)
# What one pure module may still import, and why.
ALLOWED = {
    # `load` reads the file, and paths in the config are made absolute (pure
    # except for those two steps, as the table says); `load` also has ssl
    # read each provider's ca_bundle, so a bad one stops startup.
    "config.py": {"os", "ssl"},
}


def module_path(name: str) -> Path | None:
    """The file of an llmrouter module name ("llmrouter.formats.openai"), or None."""
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def pure_files() -> list[Path]:
    files = []
    for entry in PURE:
        path = PACKAGE / entry
        files.extend(sorted(path.glob("*.py")) if entry.endswith("/") else [path])
    return files


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return True
    return False


def imports(path: Path) -> set[str]:
    """Every module name `path` imports (llmrouter ones resolved to their module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            if source.split(".")[0] == "llmrouter":
                # `from llmrouter import errors` imports a module, not a name.
                found.update(f"{source}.{a.name}" for a in node.names if module_path(f"{source}.{a.name}"))
    # Importing a.b.c runs a/__init__ and a/b/__init__ too.
    for name in list(found):
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return found


def impurities(roots: list[Path], pure: set[str]) -> list[str]:
    """What the modules `roots` import, directly or through llmrouter modules, against the rules."""
    problems = []
    seen: set[str] = set()
    todo = [module_name(p) for p in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name)
        assert path is not None, name
        allowed = ALLOWED.get(path.relative_to(PACKAGE).as_posix(), set())
        for target in sorted(imports(path)):
            top = target.split(".")[0]
            if top == "llmrouter":
                if target not in pure:
                    problems.append(f"{name} imports {target}, which is not pure")
                else:
                    todo.append(target)
            elif top in FORBIDDEN and top not in allowed:
                problems.append(f"{name} imports {target}")
    return problems


def test_pure_modules_import_nothing_impure():
    pure = {module_name(p) for p in pure_files()} | {"llmrouter"}  # the package's own __init__ runs too
    problems = impurities(pure_files(), pure)
    assert not problems, "\n".join(problems)


def test_the_walk_finds_lazy_relative_and_indirect_imports(tmp_path, monkeypatch):
    package = tmp_path / "llmrouter"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .. import helper\n")
    (package / "helper.py").write_text("")
    (package / "pure.py").write_text("from llmrouter.sub import thing\n")
    (package / "clocked.py").write_text("def now():\n    import time\n    return time.time()\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    pure = {"llmrouter", "llmrouter.pure", "llmrouter.sub", "llmrouter.clocked"}
    assert sorted(impurities([package / "pure.py", package / "clocked.py"], pure)) == [
        "llmrouter.clocked imports time",
        "llmrouter.sub imports llmrouter.helper, which is not pure",
    ]


def documented_modules() -> dict[str, str]:
    """docs/architecture.md's module table: each path in a row's first cell -> its 'pure?' cell."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    table = text[text.index("| module | pure? |"):]
    rows: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for path in re.findall(r"`([^`]+)`", cells[0]):
            rows[path] = cells[1]
    return rows


def test_the_architecture_table_lists_exactly_the_pure_modules():
    documented = documented_modules()
    said_pure = {path for path, kind in documented.items() if kind.startswith("pure")}
    assert said_pure == set(PURE), "docs/architecture.md's module table and PURE disagree"


def test_the_architecture_table_names_every_module():
    """A new module is classified (pure, I/O or edge) when it is added."""
    documented = set(documented_modules())
    modules = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py"}
    packages = {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    missing = sorted((modules | packages) - documented)
    assert not missing, f"docs/architecture.md's module table does not name {missing}"


@pytest.mark.parametrize("entry", PURE)
def test_pure_entries_exist(entry):
    assert (PACKAGE / entry).exists()
