"""README.md's Python example, run as it stands."""

from __future__ import annotations

import re

from conftest import REPO


def readme_block():
    text = (REPO / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python section of README.md has exactly one python block"
    return blocks[0]


def test_the_readme_example_runs_as_written():
    code = readme_block()
    assert len(code.strip().splitlines()) <= 10, "the README promises a ten-line example"
    exec(compile(code, "README.md", "exec"), {})


def test_the_stubs_name_what_the_module_has():
    """Every public name of ferry._ferry has a stub, and every stub a name (the .pyi is
    written by hand: this keeps it honest)."""
    import ast

    import ferry._ferry as native

    stub = REPO / "crates" / "ferry-py" / "python" / "ferry" / "_ferry.pyi"
    tree = ast.parse(stub.read_text())
    stubbed = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            stubbed.add(node.name)
            if isinstance(node, ast.ClassDef):
                cls = getattr(native, node.name)
                for m in node.body:
                    if isinstance(m, ast.FunctionDef) and not m.name.startswith("_"):
                        assert hasattr(cls, m.name), f"{node.name}.{m.name} is stubbed but missing"
                    if isinstance(m, ast.AnnAssign):
                        assert hasattr(cls, m.target.id), f"{node.name}.{m.target.id} is stubbed but missing"
        elif isinstance(node, ast.AnnAssign):
            stubbed.add(node.target.id)
    public = {n for n in dir(native) if not n.startswith("_")} | {"__version__"}
    assert public == stubbed - {"_Path"}
