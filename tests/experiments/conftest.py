"""Helpers shared by the study tests."""

from __future__ import annotations

import importlib
import sys

import pytest


def _importable_study(root, module: str, source: str, config: str, toml: str):
    """Write a toy study module (``source``) and its default config ``configs/<config>.toml`` under ``root``, put
    ``root`` on sys.path and yield the imported module (importable by name, as worker processes import a study);
    undone afterwards. For a module-scoped fixture: ``yield from importable_study(...)``."""
    (root / f"{module}.py").write_text(source)
    (root / "configs").mkdir()
    (root / "configs" / f"{config}.toml").write_text(toml)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(module, None)


@pytest.fixture(scope="session")
def importable_study():
    """``importable_study(root, module, source, config, toml)``: a generator for module-scoped toy-study fixtures
    (``yield from importable_study(...)``)."""
    return _importable_study
