"""The shape of every runbook (docs/architecture.md), read from the source with `ast`:

- `tasks/` never imports `flows/`;
- a flow module imports another flow module only to run its `@flow` as a subflow;
- a `@flow` function orchestrates: no polling loop, no sleep, no markdown, and it fits on
  one screen;
- every `@task` says what a resumed attempt does with it (`tasks/checkpoints.py`: OBSERVE,
  CHECKPOINT or EFFECT), and docs/architecture.md lists it with that policy.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import pytest

from tasks.config import REPO_ROOT

SCREEN_LINES = 60  # a flow function, docstring included, reads on one screen


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _is_flow_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "flow") or (
        isinstance(target, ast.Attribute) and target.attr == "flow")


def flow_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [n for n in tree.body if isinstance(n, ast.FunctionDef) and any(map(_is_flow_decorator, n.decorator_list))]


def import_violations(sources: dict[str, str]) -> list[Violation]:
    """`sources` maps a path relative to the repository (flows/deploy.py) to its text."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    flows_of = {_module_name(p): {f.name for f in flow_functions(t)} for p, t in trees.items()
                if p.startswith("flows/")}
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):  # imports inside functions count too
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "flows" or alias.name.startswith("flows."):
                        found.append(Violation(path, node.lineno, f"import {alias.name}: import the @flow by name, "
                                                                   "or move the shared piece to tasks/"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module != "flows" and not node.module.startswith("flows."):
                    continue
                if path.startswith("tasks/"):
                    found.append(Violation(path, node.lineno, f"from {node.module} import ...: tasks/ never "
                                                               "imports flows/"))
                    continue
                allowed = flows_of.get(node.module, set())
                for alias in node.names:
                    if alias.name not in allowed:
                        found.append(Violation(path, node.lineno, f"from {node.module} import {alias.name}: "
                                                                   f"{alias.name} is not a @flow of {node.module}; "
                                                                   "shared pieces belong in tasks/"))
    return found


def flow_shape_violations(path: str, text: str) -> list[Violation]:
    found = []
    for fn in flow_functions(ast.parse(text, filename=path)):
        length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if length > SCREEN_LINES:
            found.append(Violation(path, fn.lineno, f"@flow {fn.name} is {length} lines, over one screen "
                                                    f"({SCREEN_LINES})"))
        for node in ast.walk(fn):
            if isinstance(node, ast.While):
                found.append(Violation(path, node.lineno, f"@flow {fn.name} polls in a while loop: wait in a task"))
            if isinstance(node, ast.Attribute) and node.attr == "sleep":
                found.append(Violation(path, node.lineno, f"@flow {fn.name} sleeps: wait in a task"))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    "\n#" in node.value or node.value.startswith(("# ", "| ", "**"))):
                found.append(Violation(path, node.lineno, f"@flow {fn.name} writes markdown: use tasks/reports.py"))
    return found


def _sources(*folders: str) -> dict[str, str]:
    return {str(p.relative_to(REPO_ROOT)): p.read_text() for folder in folders
            for p in sorted((REPO_ROOT / folder).glob("*.py"))}


def test_flows_import_other_flows_only_to_run_them_and_tasks_never_import_flows() -> None:
    violations = import_violations(_sources("flows", "tasks"))
    assert not violations, "\n".join(map(str, violations))


def test_every_flow_function_only_orchestrates_and_fits_on_one_screen() -> None:
    violations = [v for path, text in _sources("flows").items() for v in flow_shape_violations(path, text)]
    assert not violations, "\n".join(map(str, violations))


def test_flow_modules_write_no_markdown_and_build_no_clients() -> None:
    """Reports are rendered in tasks/reports.py; clients are built by their system's module."""
    for path, text in _sources("flows").items():
        for forbidden in ("md_table", "create_markdown_artifact", "httpx", "boto3", "psycopg"):
            assert forbidden not in text, f"{path} uses {forbidden}"


def _is_task_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Name) and target.id == "task"


def task_policies(path: str, text: str) -> tuple[dict[str, str], list[Violation]]:
    """Each `@task` function's policy (the `checkpoints.X` it spreads into `@task`), and the
    tasks that have none."""
    policies: dict[str, str] = {}
    missing = []
    for node in ast.walk(ast.parse(text, filename=path)):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in filter(_is_task_decorator, node.decorator_list):
            kinds = [kw.value.attr for kw in getattr(dec, "keywords", []) if kw.arg is None
                     and isinstance(kw.value, ast.Attribute) and isinstance(kw.value.value, ast.Name)
                     and kw.value.value.id == "checkpoints"]
            if kinds:
                policies[node.name] = kinds[0]
            else:
                missing.append(Violation(path, node.lineno, f"@task {node.name} has no checkpoints.OBSERVE, "
                                                            "CHECKPOINT or EFFECT: say what a resumed attempt does"))
    return policies, missing


def test_every_task_declares_what_a_resumed_attempt_does_with_it() -> None:
    from tasks.checkpoints import KINDS

    violations = []
    for path, text in _sources("flows", "tasks").items():
        policies, missing = task_policies(path, text)
        violations += missing
        violations += [Violation(path, 0, f"@task {name}: unknown policy {kind}")
                       for name, kind in policies.items() if kind not in KINDS]
    assert not violations, "\n".join(map(str, violations))


def test_docs_list_every_task_with_its_policy() -> None:
    doc = (REPO_ROOT / "docs" / "architecture.md").read_text()
    unlisted = [f"{path}: {name} ({kind})" for path, text in _sources("flows", "tasks").items()
                for name, kind in task_policies(path, text)[0].items() if f"| `{name}` | {kind} |" not in doc]
    assert not unlisted, "docs/architecture.md does not list: " + ", ".join(unlisted)


def test_the_policy_check_names_a_task_without_one() -> None:
    source = "from prefect import task\n\n@task(retries=2)\ndef upload() -> None: ...\n"
    _, missing = task_policies("tasks/x.py", source)
    assert [str(v) for v in missing] == ["tasks/x.py:4: @task upload has no checkpoints.OBSERVE, CHECKPOINT or "
                                         "EFFECT: say what a resumed attempt does"]


# --- the checker itself catches what it should: each row a violation it must report ------------------

FLOW_MODULE = "from prefect import flow\n\n@flow(name='b')\ndef run_b() -> None: ...\n\ndef helper() -> None: ...\n"


@pytest.mark.parametrize(("path", "source", "says"), [
    ("flows/a.py", "from flows.b import helper\n", "helper is not a @flow of flows.b"),
    ("flows/a.py", "def f():\n    from flows.b import helper\n", "helper is not a @flow of flows.b"),  # hidden in a function
    ("flows/a.py", "import flows.b\n", "import flows.b"),
    ("tasks/x.py", "from flows.b import run_b\n", "tasks/ never imports flows/"),
], ids=["flow-module-as-library", "import-inside-a-function", "module-import", "tasks-import-flows"])
def test_the_import_rule_names_the_file_and_the_import(path: str, source: str, says: str) -> None:
    violations = import_violations({"flows/b.py": FLOW_MODULE, path: source})
    assert [v.file for v in violations] == [path] and says in str(violations[0])


def test_the_import_rule_allows_running_another_flow_as_a_subflow() -> None:
    assert import_violations({"flows/b.py": FLOW_MODULE, "flows/a.py": "from flows.b import run_b\n"}) == []


@pytest.mark.parametrize(("body", "says"), [
    ("    while True:\n        pass\n", "polls in a while loop"),
    ("    time.sleep(1)\n", "sleeps"),
    ("    x = '# Report\\n'\n", "writes markdown"),
    ("    pass\n" * SCREEN_LINES, "over one screen"),
], ids=["while", "sleep", "markdown", "too-long"])
def test_the_flow_shape_check_catches_logic_in_a_flow_body(body: str, says: str) -> None:
    source = f"import time\nfrom prefect import flow\n\n@flow\ndef f() -> None:\n{body}"
    assert says in str(flow_shape_violations("flows/x.py", source)[0])


def test_every_config_field_is_read_by_some_code() -> None:
    """A setting that silently does nothing is a defect: each field of the config models is
    read as `.field` somewhere in flows/, tasks/ or deployments/."""
    import re

    from pydantic import BaseModel

    import tasks.config as config

    code = "\n".join(_sources("flows", "tasks", "deployments").values())
    models = [m for m in vars(config).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == config.__name__]
    unread = [f"{m.__name__}.{f}" for m in models for f in m.model_fields if not re.search(rf"\.{f}\b", code)]
    assert not unread, f"declared but never read: {', '.join(unread)}"
