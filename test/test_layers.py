"""The package's shape, read from its own imports: folders import only the layers below them, no two files
import each other (directly or round a circle), and an import inside a function is for an optional
dependency only."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vla_driver"
LAYERS = {"core": 0, "model": 1, "runtime": 2, "sim": 3, "experience": 3, "nodes": 4, "harness": 5, "rl": 6,
          "bench": 7, "cli": 8}
# imported where used, with a fallback or a clear error; PIL only where an image is resized, so the core's
# maths imports without Pillow (the GPU check runs where only torch, transformers, peft and safetensors are)
OPTIONAL = {"tensorrt", "ray", "onnxruntime", "PIL"}


def modules() -> dict[str, ast.Module]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): ast.parse(p.read_text())
            for p in PACKAGE.rglob("*.py")}


def imported(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Package modules ``name`` imports (anywhere in the file)."""
    package = name if name.endswith("__init__") else name.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known}


def test_folders_import_only_the_layers_below_them():
    mods = modules()
    known = set(mods)
    upward = []
    for name, tree in mods.items():
        parts = name.split(".")
        if len(parts) < 3:
            continue
        for target in imported(name, tree, known):
            other = target.split(".")
            if len(other) >= 2 and other[1] in LAYERS and parts[1] in LAYERS and other[1] != parts[1] \
                    and LAYERS[other[1]] >= LAYERS[parts[1]]:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_no_import_circle_between_files():
    mods = modules()
    graph = {name: imported(name, tree, set(mods)) - {name} for name, tree in mods.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in graph:
        if start not in state:
            assert (cycle := visit(start, [])) is None, " -> ".join(cycle)


def test_imports_inside_functions_are_for_optional_dependencies_only():
    hidden = []
    for name, tree in modules().items():
        top = set(map(id, tree.body))
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top and id(node) not in guarded:
                root = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
                if getattr(node, "level", 0) or root.split(".")[0] not in OPTIONAL:
                    hidden.append(f"{name}:{node.lineno} {root}")
    assert not hidden, hidden
