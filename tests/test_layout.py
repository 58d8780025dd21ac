"""The package's layout: no import circles, data/ at the bottom, library code never imports the
CLI layer, each folder's __init__.py only a docstring, and the README's tree the package's."""

import ast
import os
import re

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(PROJECT_DIR, "plate_ocr")


def modules() -> dict[str, str]:
    """Each module of the package by dotted name under plate_ocr ("data.fonts", "__main__"):
    its file. A folder's __init__.py is the folder's name ("data")."""
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        parts = os.path.relpath(folder, PACKAGE).split(os.sep)
        parts = [] if parts == ["."] else parts
        if "__pycache__" in parts:
            continue
        for name in names:
            if name.endswith(".py"):
                stem = [] if name == "__init__.py" else [name[:-3]]
                found[".".join(parts + stem) or "__init__"] = os.path.join(folder, name)
    return found


def imports() -> dict[str, set[str]]:
    """Each module of the package: the package's modules it imports (lazy imports too)."""
    files = modules()

    def resolve(dotted: str, names=()) -> set[str]:
        """`from plate_ocr.<dotted> import names`: the modules among names, else <dotted>."""
        found = {f"{dotted}.{name}" if dotted else name for name in names}
        found &= set(files)
        return found or ({dotted} if dotted in files else set())

    graph = {}
    for module, path in files.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        used = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's own package up
                    base = package.split(".") if package else []
                    base = base[:len(base) - node.level + 1]
                    dotted = ".".join(base + ([node.module] if node.module else []))
                elif node.module == "plate_ocr" or (node.module or "").startswith("plate_ocr."):
                    dotted = node.module[len("plate_ocr."):] if "." in node.module else ""
                else:
                    continue
                used |= resolve(dotted, [alias.name for alias in node.names])
            elif isinstance(node, ast.Import):
                used |= {alias.name[len("plate_ocr."):] for alias in node.names
                         if alias.name.startswith("plate_ocr.")}
        graph[module] = used - {module}
    return graph


def test_the_walk_finds_every_folder():
    assert {module.partition(".")[0] for module in modules()} >= {
        "data", "training", "serving", "benchmark", "cli", "__main__"}
    assert imports()["__main__"] >= {"cli.data", "cli.train"}


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
    commands = {module for module in graph if module.split(".")[0] in ("cli", "__main__")}
    assert {module: sorted(used & commands) for module, used in graph.items()
            if module not in commands and used & commands} == {}


def test_data_imports_no_later_stage():
    assert {module: sorted(used) for module, used in imports().items()
            if module.split(".")[0] == "data"
            and any(name.split(".")[0] != "data" for name in used)} == {}


def test_each_folder_init_is_only_a_docstring():
    for module, path in modules().items():
        if path.endswith("__init__.py"):
            body = ast.parse(open(path).read()).body
            assert len(body) == 1 and isinstance(body[0].value, ast.Constant), path


def test_the_readme_layout_lists_every_module():
    readme = open(os.path.join(PROJECT_DIR, "README.md")).read()
    tree = readme.split("## Layout", 1)[1].split("```")[1]
    listed, folder = set(), ""
    for line in tree.splitlines():
        entry = re.match(r"( *)(\S+)", line)
        if not entry or line.startswith("plate_ocr/") or not line.startswith("  "):
            continue
        name = entry.group(2)
        if len(entry.group(1)) == 2 and name.endswith("/"):
            folder = name
        elif len(entry.group(1)) == 2:
            folder = ""
            listed.add(name)
        elif len(entry.group(1)) == 4 and name.endswith(".py"):
            listed.add(folder + name)
    package = {os.path.relpath(path, PACKAGE) for path in modules().values()
               if not path.endswith("__init__.py")}
    assert listed == package
