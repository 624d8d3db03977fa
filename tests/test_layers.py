"""The layers of the design card, read from the source with ``ast`` (nothing is imported): no circle between the
library's packages, and no library module imports a script; and modules small enough to hold one concern."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "data", "models", "training", "prediction", "uploads", "scoring", "tools")
SCRIPTS = ("train", "predict", "ensemble", "augment", "bench")
MAX_LINES = 400                                   # a longer module holds more than one concern: split it by concern
THIN_SCRIPTS = {"ensemble": 150, "augment": 150}  # arguments, main and the printout over a library module


def imported_modules(source, module):
    """Dotted names of the modules that ``source`` (the text of ``module``, dotted) imports anywhere in it: at the
    top and inside functions, relative imports resolved."""
    package = module.split(".")[:-1]                                  # "data.__init__" and "data.x" are in data
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            names += [stem] if node.module else [f"{stem}.{alias.name}" for alias in node.names]
    return names


def library_modules(root=ROOT):
    """{dotted module name: path} of every module in the packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[".".join(path.relative_to(root).with_suffix("").parts)] = path
    return found


def package_graph(imports):
    """{package: set of other packages it imports} from {dotted module: [imported dotted names]}."""
    graph = {}
    for module, names in imports.items():
        own = module.split(".")[0]
        targets = {name.split(".")[0] for name in names} & set(PACKAGES)
        graph.setdefault(own, set()).update(targets - {own})
    return graph


def find_cycle(graph):
    """One circle of ``graph`` ({node: iterable of nodes}) as a list of nodes whose first is repeated at its end,
    or None when the graph has none (depth-first search; the grey set holds the current path)."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            circle = visit(target)
            if circle:
                return circle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        circle = visit(start)
        if circle:
            return circle
    return None


def script_imports(imports):
    """[(library module, script)] for every import of a root script by a library module."""
    return [(module, name) for module, names in imports.items() for name in names if name.split(".")[0] in SCRIPTS]


@pytest.fixture(scope="module")
def tree_imports():
    return {module: imported_modules(path.read_text(), module) for module, path in library_modules().items()}


def test_cycle_finder_on_a_synthetic_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d"}}) == ["d", "d"]


def test_imports_are_read_from_every_form():
    source = ("import models\nfrom core.common import UserError\nimport data.readers as readers\n"
              "def late():\n    from training import recipes\n    from . import sibling\n    from .x import y\n")
    assert imported_modules(source, "prediction.inference") == [
        "models", "core.common", "data.readers", "training", "prediction.sibling", "prediction.x"]


def test_a_planted_circle_and_a_planted_script_import_are_found(tree_imports):
    planted = {**tree_imports, "core.planted": ["training.trainer"], "data.planted": ["ensemble"]}
    circle = find_cycle(package_graph(planted))
    assert circle is not None and circle[0] == circle[-1] and "core" in circle
    assert ("data.planted", "ensemble") in script_imports(planted)


def test_no_circle_between_packages(tree_imports):
    assert library_modules(), "no package found beside tests/"
    circle = find_cycle(package_graph(tree_imports))
    assert circle is None, f"packages import each other in a circle: {' -> '.join(circle)}"


def test_no_library_module_imports_a_script(tree_imports):
    assert script_imports(tree_imports) == [], "library modules must not import the root scripts"


def line_count(path):
    return len(path.read_text().splitlines())


def test_no_module_is_longer_than_one_concern():
    modules = [*library_modules().values(), *(ROOT / f"{name}.py" for name in SCRIPTS)]
    long = {str(path.relative_to(ROOT)): line_count(path) for path in modules if line_count(path) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them by concern"


@pytest.mark.parametrize("script", sorted(THIN_SCRIPTS))
def test_thin_scripts_stay_thin(script):
    assert line_count(ROOT / f"{script}.py") <= THIN_SCRIPTS[script]
