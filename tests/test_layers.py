"""The layers point one way: a module imports only from its own layer or the layers below it.

The order, lowest first (a package is one layer; top-level modules are named):

    core      utils, runs, checkpoint, distributed, training
    data      data files (JSONL/JSON/CSV/Parquet), record helpers, HH-RLHF transcripts and split
    kernels   kernels/ (CPU speed tricks: oneDNN linears, the fast decoder, the skinny kernels)
    losses    pure loss and estimator functions
    tasks     the Task protocol, the registry, concrete tasks
    feedback  raters, file sources, records
    policies  loading, tokenizers, sampling
    rewards   proxies: reward models, verifier
    evals     behaviour evaluations of any policy (Anthropic's evals, TruthfulQA, GSM8K)
    methods   the registry of methods (plain data)
    config    typed configs
    audit     proxy vs gold vs KL, law fits, criteria
    report    analysis -> plots, html -> build (reads run folders; recipes call it at the end)
    optimize  the algorithms' step functions and loops (and control/: planners, IRL, imitation on control tasks)
    pipelines the recipes (one per stage), rewardlab run
    cli

Imports under ``if TYPE_CHECKING:`` are not runtime dependencies and are skipped. A second test checks
that nothing outside ``tasks/`` imports a concrete task module (only ``tasks.base`` and ``tasks.registry``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rewardlab"
LAYERS: list[set[str]] = [
    {"__init__", "utils", "checkpoint", "distributed", "runs", "training"},
    {"data"},
    {"kernels"},
    {"losses"},
    {"tasks"},
    {"feedback"},
    {"policies"},
    {"rewards"},
    {"evals"},
    {"methods"},
    {"config"},
    {"audit"},
    {"report"},
    {"optimize", "control"},
    {"pipelines"},
    {"studies"},
    {"cli"},
]


def _layer(module: str) -> int:
    """Layer index of a dotted module path relative to the package (``optimize.lm``, ``utils``)."""
    for name in (module, module.split(".")[0]):
        for i, names in enumerate(LAYERS):
            if name in names:
                return i
    raise AssertionError(f"module {module} is in no layer: add it to LAYERS")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported rewardlab module) for every runtime import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rewardlab"):
            mod = node.module.removeprefix("rewardlab").lstrip(".")
            if not mod:  # from rewardlab import x: a submodule, else an attribute of the package
                out += [(node.lineno, a.name if (SRC / f"{a.name}.py").exists() or (SRC / a.name).is_dir()
                         else "__init__") for a in node.names]  # fmt: skip
            else:
                out.append((node.lineno, mod))
        elif isinstance(node, ast.Import):
            out += [
                (node.lineno, a.name.removeprefix("rewardlab."))
                for a in node.names
                if a.name.startswith("rewardlab.")
            ]
    return out


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
    return ".".join(parts)


def test_imports_only_point_down() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        mod = _module_of(path)
        here = _layer(mod)
        for line, target in _imports(path):
            if _layer(target) > here:
                upward.append(f"{path.relative_to(SRC)}:{line} ({LAYERS_NAMES[here]}) imports {target} "
                              f"({LAYERS_NAMES[_layer(target)]})")  # fmt: skip
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    mods = {_module_of(p): p for p in SRC.rglob("*.py")}
    for mod, path in mods.items():
        graph[mod] = {t for _, t in _imports(path) if t in mods and t != mod}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n) :], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_nothing_outside_tasks_imports_a_concrete_task() -> None:
    leaks = []
    for path in sorted(SRC.rglob("*.py")):
        mod = _module_of(path)
        if mod.startswith("tasks"):
            continue
        for line, target in _imports(path):
            if target.startswith("tasks.") and target.split(".")[1] not in ("base", "registry"):
                leaks.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not leaks, "modules outside tasks/ that import a concrete task:\n" + "\n".join(leaks)


def test_the_checks_catch_a_violation(tmp_path: Path) -> None:
    """The walker sees a function-level upward import and skips TYPE_CHECKING blocks."""
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rewardlab.cli import main\n"
                 "def g():\n    from rewardlab.report.build import build_report\n")  # fmt: skip
    assert [t for _, t in _imports(f)] == ["report.build"]
    assert _layer("report.build") > _layer("rewards.model")


LAYERS_NAMES = ["core", "data", "kernels", "losses", "tasks", "feedback", "policies", "rewards", "evals", "methods", "config",
                "audit", "report", "optimize", "pipelines", "cli"]  # fmt: skip
