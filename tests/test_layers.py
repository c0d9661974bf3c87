"""An arrow never climbs (/work/shared/ARCHITECTURE.md): no module of fedsim/ or topologies/ imports attacks/ or
experiments/, and topologies/ does not import fedsim. Every module is parsed with ``ast`` (imports inside functions
included, and ``importlib.import_module`` / ``__import__`` / ``importlib.resources.files`` of a literal name); the
commands of the higher packages reach ``fedsim`` through the ``fedsim.commands`` entry points, checked here too."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
from pathlib import Path

import pytest

from fedsim.cli import COMMAND_ORDER, build_parser, main
from fedsim.config import tomllib

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"fedsim": {"attacks", "experiments"}, "topologies": {"attacks", "experiments", "fedsim"}}
DYNAMIC = {"import_module", "__import__", "files"}     # importlib.import_module("x"), __import__("x"), files("x")


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the tree, at any depth, and of literal dynamic imports."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in DYNAMIC:
                found.append((node.lineno, node.args[0].value))
    return found


def climbing_imports(package: str, root: Path = REPO) -> list[str]:
    """``path:line imports name`` for each import of ``root/package``'s modules that names a forbidden package."""
    bad = []
    files = sorted((root / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in imported_names(tree):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(root)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_climbs(package):
    assert climbing_imports(package) == []


def test_the_scan_sees_every_kind_of_import():
    """The scanner itself: each form below is found, at module level and inside functions and branches."""
    code = ("import attacks\nimport os, experiments.tour as t\nfrom attacks.cli import register\n"
            "def f():\n    if True:\n        from experiments import tour\n"
            "    import importlib\n    importlib.import_module('attacks.vision')\n    __import__('experiments')\n"
            "    resources.files('experiments')\nfrom . import sibling\nfrom fedsim import config\n")
    found = sorted(imported_names(ast.parse(code)))
    assert found == [(1, "attacks"), (2, "experiments.tour"), (2, "os"), (3, "attacks.cli"), (6, "experiments"),
                     (7, "importlib"), (8, "attacks.vision"), (9, "experiments"), (10, "experiments"), (12, "fedsim")]


def test_a_planted_climbing_import_is_caught(tmp_path):
    """Copy topologies/ and fedsim/ into a scratch repository, plant one import inside a function: it is named."""
    import shutil

    for package in FORBIDDEN:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "fedsim" / "rng.py").open("a") as f:
        f.write("\n\ndef _planted():\n    from attacks.experiment import run_attacks\n    return run_attacks\n")
    with (tmp_path / "topologies" / "__init__.py").open("a") as f:
        f.write("\nimport fedsim.rng  # noqa\n")
    (fedsim_bad,) = climbing_imports("fedsim", tmp_path)
    assert fedsim_bad.startswith("fedsim/rng.py:") and fedsim_bad.endswith("imports attacks.experiment")
    assert [b.split(" imports ")[1] for b in climbing_imports("topologies", tmp_path)] == ["fedsim.rng"]


# --------------------------------------------------------------------------- the commands above fedsim


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_installed_entry_points_are_pyproject_s():
    """The installed metadata declares the pyproject's ``fedsim.commands`` table (else: pip install -e . again)."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["fedsim.commands"]
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="fedsim.commands")}
    assert installed == declared, "stale install: run pip install -e . to update the entry points"
    assert set(declared) == {"attack", "experiment", "quickstart"}


def test_help_lists_every_command_in_order(capsys):
    assert list(subcommands(build_parser())) == list(COMMAND_ORDER)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("COMMAND\n", 1)[1].split("\n\n")[0].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(COMMAND_ORDER)


def swap_attack(eps, replacement, query: dict) -> list:
    """The entry points of ``query``, ``attack`` of the group fedsim.commands replaced (other groups as they are)."""
    if query.get("group") != "fedsim.commands":
        return eps
    return [ep for ep in eps if ep.name != "attack"] + [replacement]


@pytest.fixture
def broken_attack(monkeypatch):
    """The ``attack`` entry point names a package that is not installed."""
    real = importlib.metadata.entry_points

    broken = importlib.metadata.EntryPoint("attack", "no_such_package.cli:register", "fedsim.commands")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: swap_attack(real(**kw), broken, kw))


def test_a_command_that_fails_to_load_says_so_in_one_line(broken_attack, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--help"]) == 0                                          # the other commands still work
    out = capsys.readouterr().out
    assert "attack (unavailable: ModuleNotFoundError: No module named 'no_such_package')" in " ".join(out.split())
    assert list(subcommands(build_parser())) == list(COMMAND_ORDER)       # in its place
    for argv in (["attack"], ["attack", "--victims", "5", "--out", "x"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == ("fedsim: error: fedsim attack is unavailable: no_such_package.cli:register failed "
                                     "to load (ModuleNotFoundError: No module named 'no_such_package')\n")
    assert main(["topology", "ring", "-n", "4"]) == 0
    assert main(["topology", "ring", "-n", "4", "--bogus"]) == 2           # other commands still refuse extras
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_register_that_raises_leaves_its_command_saying_so(monkeypatch, capsys):
    """A ``register`` that adds its parser and then fails: the command exists and says what went wrong."""
    real = importlib.metadata.entry_points

    class Half:
        def load(self):
            def register(sub):
                sub.add_parser("attack", help="half registered")
                raise RuntimeError("boom")
            return register

        name, value = "attack", "attacks.cli:register"

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: swap_attack(real(**kw), Half(), kw))
    assert main(["attack", "--anything"]) == 2
    assert capsys.readouterr().err == ("fedsim: error: fedsim attack is unavailable: attacks.cli:register failed to "
                                       "load (RuntimeError: boom)\n")


RESUME = "; rerun with --resume to continue from the last checkpoint"


@pytest.mark.parametrize("module, name, argv, hint", [
    ("fedsim.cli", "cmd_run", ["run", "c.toml"], RESUME),
    ("experiments.cli", "cmd_quickstart", ["quickstart"], RESUME),
    ("experiments.cli", "cmd_experiment", ["experiment", "topologies"],
     "; run the same command again to resume (finished points are kept)"),
    ("attacks.cli", "cmd_attack", ["attack"], ""),
])
def test_ctrl_c_keeps_each_command_s_hint(module, name, argv, hint, monkeypatch, capsys, tmp_path):
    """The hints of the moved commands are the ones fedsim.cli printed for them before (their parsers carry them)."""
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err == f"fedsim: interrupted{hint}\n"
