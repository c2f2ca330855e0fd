"""The code's shape, checked: no import hides inside a function to dodge a cycle.

The layers and the cycles are import-linter's job (`make lint`, `[tool.importlinter]` in
pyproject.toml); this checks what it cannot see: where an import statement stands.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tlearn"

# Imported inside functions on purpose: optional dependencies (a missing one must not break
# `import tlearn`), and heavy subsystems only some commands use.
OPTIONAL = {
    "onnx", "onnxruntime", "onnxscript", "fastapi", "uvicorn", "starlette", "httpx",
    "cleanlab", "sklearn", "tensorboard", "huggingface_hub",
    "matplotlib",  # figures only (lr_find.png, the report): ~0.4 s to import, needed by few runs
    "torch._dynamo",  # --compile only: ~1 s to import, absent on some platforms
    "torch.utils.tensorboard",  # --tensorboard only (the tensorboard extra)
    "tlearn.report",  # its modules draw with matplotlib.pyplot: imported by the commands that draw
}  # fmt: skip


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] if node.level == 0 else ["." * node.level]
    return [alias.name for alias in node.names]


def is_optional(name: str) -> bool:
    return any(name == o or name.startswith(o + ".") for o in OPTIONAL)


def function_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found += [
                    f"{path.relative_to(SRC.parent)}:{node.lineno} {name}"
                    for name in imported_names(node)
                    if not is_optional(name)
                ]
    return found


def test_no_import_inside_a_function_except_optional_dependencies():
    found = sorted({line for path in modules() for line in function_level_imports(path)})
    assert found == [], "imports inside functions (move them to the top):\n" + "\n".join(found)


def test_the_scan_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    import json\n    from sklearn import svm\n")
    global SRC
    saved, SRC = SRC, tmp_path / "pkg"
    try:
        assert [line.split(" ")[1] for line in function_level_imports(sample)] == ["json"]
    finally:
        SRC = saved


def test_the_trainer_imports_alone_in_a_fresh_interpreter():
    """No cycle held apart by import order: the trainer imports first, on its own."""
    subprocess.run([sys.executable, "-c", "import tlearn.training.trainer"], check=True)


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 80


def test_modules_and_functions_stay_small():
    """A module under 500 lines, a function under 80: past them, find the seam and split."""
    too_long = []
    for path in modules():
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(SRC.parent)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert too_long == [], "\n".join(too_long)


def test_the_plan_arithmetic_needs_no_torch():
    """`make_plan` and the refits are pure arithmetic: testable without a network or a clock."""
    tree = ast.parse((SRC / "training" / "budget" / "plan.py").read_text(encoding="utf-8"))
    names = [n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for n in imported_names(node)]  # fmt: skip
    assert not [n for n in names if n.split(".")[0] in ("torch", "time")], names
