"""The package's import graph: no circles, and library code never imports the CLI layer."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plate_ocr")


def imports() -> dict[str, set[str]]:
    """Each module of the package: the package's modules it imports (lazy imports too)."""
    graph = {}
    for name in sorted(os.listdir(PACKAGE)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(PACKAGE, name)).read())
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "plate_ocr":
                used |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plate_ocr."):
                used.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                used |= {alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("plate_ocr.")}
        graph[name[:-3]] = used
    return graph


def test_no_module_imports_itself_through_others():
    graph = imports()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return seen
    assert [module for module in graph if module in reaches(module)] == []


def test_library_code_does_not_import_the_commands():
    graph = imports()
    commands = {module for module in graph if module.startswith("cli") or module == "__main__"}
    assert {module: sorted(used & commands) for module, used in graph.items()
            if module not in commands and used & commands} == {}
