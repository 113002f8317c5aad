"""The shape of the code: no import circle among our modules, and the model packages import no evaluation code.

Read from the source (every `import` / `from ... import` at any depth of a module, function-local ones included),
so that a circle hidden inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

CODE = Path(__file__).resolve().parents[1] / "code"
# What scores and compares decoded images; the models (sc_mbm, dc_ldm) must train and sample without it.
EVALUATION = {
    "eval_metrics",
    "intervals",
    "feature_nets",
    "baselines",
    "gen_eval",
    "evaluate",
    "figures",
    "classifier_file",
}
MODEL_PACKAGES = ("sc_mbm", "dc_ldm")


def _modules() -> dict[str, Path]:
    out = {}
    for path in CODE.rglob("*.py"):
        parts = path.relative_to(CODE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__":
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Our modules that `name` (at `path`) imports, resolved to the longest module name that exists."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in modules and candidate != name:
                    found.add(candidate)
                    break
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph` as a list of names (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _reaches(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module `start` imports, directly or not, each with the module that imports it."""
    seen, todo = {}, [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen[nxt] = node
                todo.append(nxt)
    return seen


def test_the_graph_sees_our_imports():
    graph = import_graph()
    assert "dataset" in graph["stageB_ldm_finetune"] and "config" in graph["gen_eval"]
    assert "sc_mbm.mae_for_fmri" in graph["dc_ldm.conditioners.base"]  # `from sc_mbm.mae_for_fmri import ...`
    assert {"a", "b"} <= set(_cycle({"a": {"b"}, "b": {"a"}}) or [])
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_model_packages_import_no_evaluation_code():
    graph = import_graph()
    for name in graph:
        if not name.startswith(MODEL_PACKAGES):
            continue
        reached = _reaches(graph, name)
        bad = sorted(set(reached) & EVALUATION)
        assert not bad, f"{name} imports evaluation code: " + ", ".join(f"{b} (through {reached[b]})" for b in bad)


def test_no_import_circle_between_packages():
    """A package counts as one node (sc_mbm, dc_ldm, readers, demo): a module of one that imports another that
    imports back is a circle too, whichever modules carry it."""
    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        top = name.split(".")[0]
        graph.setdefault(top, set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != top)
    cycle = _cycle(graph)
    assert cycle is None, "import circle between packages: " + " -> ".join(cycle)
