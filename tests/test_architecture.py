"""The shape of the package, as docs/architecture.md states it: layers, no import cycles, short modules.

Imports are read from the source (imports inside functions included), so a lazy import cannot
hide a cycle or a layer broken the wrong way.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imgclean"
MAX_LINES = 500  # never longer
EXPLAIN_OVER = 400  # longer than this only with a reason in the module docstring ("Longer than 400 lines: ...")

# Each layer may import itself and the layers listed for it, nothing else (docs/architecture.md).
LAYERS = {
    "core": (),  # errors, config, settings, data, walk, fileops, metrics, the package itself
    "detectors": ("core",),
    "nn": ("core",),
    "quarantine": ("core",),
    "store": ("core", "detectors", "nn"),
    "reports": ("core", "quarantine"),
    "pipeline": ("core", "detectors", "nn", "quarantine", "store", "reports"),
    "jobs": ("core", "detectors", "nn", "quarantine", "store", "reports", "pipeline"),  # the requests of the front door
    "api": ("core", "detectors", "nn", "quarantine", "store", "reports", "pipeline", "jobs"),
    "cli": ("core", "detectors", "nn", "quarantine", "store", "reports", "pipeline", "jobs"),
}
SPECIAL = {"imgclean.api": "api", "imgclean.__main__": "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The imgclean modules `name` imports anywhere in its source (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer_of(name: str) -> str:
    if name in SPECIAL:
        return SPECIAL[name]
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "core"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph.setdefault("imgclean.errors", set()).add("imgclean.cli")  # errors -> cli -> ... -> errors
    graph["imgclean.cli"] = graph.get("imgclean.cli", set()) | {"imgclean.errors"}
    assert find_cycle(graph) is not None


def test_every_module_belongs_to_a_known_layer():
    unknown = {name: layer_of(name) for name in modules() if layer_of(name) not in LAYERS}
    assert not unknown, unknown


def test_layers_import_only_what_they_may():
    wrong = []
    for name, targets in import_graph().items():
        mine = layer_of(name)
        for target in targets:
            theirs = layer_of(target)
            if theirs != mine and theirs not in LAYERS[mine]:
                wrong.append(f"{name} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_short(name):
    path = modules()[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES})"
    if lines > EXPLAIN_OVER:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert f"Longer than {EXPLAIN_OVER} lines" in doc, f"{path} has {lines} lines and no reason at its top"


ROOMS = ("scan", "engines", "fit", "learn", "audit", "apply")


def test_engines_know_no_other_room_of_the_pipeline():
    """An engine (pipeline/engines/) only decodes and scores: it imports the shared decoder but
    nothing of the scan, fit, learn, audit or apply rooms, so a third engine needs none of them."""
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("imgclean.pipeline.engines"):
            other = sorted(i for i in imported if i.split(".")[2:3] and i.split(".")[2] in ROOMS
                           and not i.startswith("imgclean.pipeline.engines"))
            assert not other, f"{name} imports {other}"


def test_the_pipeline_is_split_into_its_rooms():
    loose = sorted(p.name for p in (PACKAGE / "pipeline").glob("*.py"))
    assert loose == ["__init__.py", "blas.py", "decode.py", "decode_workers.py", "evaluate.py"]
    for room in ROOMS:
        assert (PACKAGE / "pipeline" / room / "__init__.py").is_file()


MAX_FUNCTION_LINES = 80


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_function_is_over_80_lines(name):
    assert not long_functions(modules()[name]), f"{name}: {long_functions(modules()[name])}"


def test_a_long_function_is_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n" + "    x = 1\n" * 90 + "\n\ndef g():\n    return 1\n")
    assert long_functions(path) == ["f (91 lines)"]


# Private names of the standard library and of named tuples that are public by convention.
ALLOWED_PRIVATE = {"_exit", "_make", "_fields", "_replace", "_asdict", "_posixshmem", "_click"}


def reach_ins(name: str, path: Path, known: set[str]) -> list[str]:
    """Private names of another imgclean module that `name` imports or reads (`mod._x`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {}  # local name -> imgclean module
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    aliases[alias.asname or alias.name] = full
                elif base in known and base != name and alias.name.startswith("_") and not alias.name.startswith("__") \
                        and alias.name not in ALLOWED_PRIVATE:
                    found.append(f"from {base} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            attr = node.attr
            if attr.startswith("_") and not attr.startswith("__") and attr not in ALLOWED_PRIVATE:
                found.append(f"{aliases[node.value.id]}.{attr}")
    return found


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_reaches_into_another_modules_private_names(name):
    mods = modules()
    assert not reach_ins(name, mods[name], set(mods)), reach_ins(name, mods[name], set(mods))


def test_a_reach_in_is_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from imgclean import data\nfrom imgclean.walk import _identities\nx = data._to_mode\ny = data.OK\n")
    assert reach_ins("imgclean.m", path, {"imgclean", "imgclean.data", "imgclean.walk"}) == [
        "from imgclean.walk import _identities", "imgclean.data._to_mode"]
