"""The code in the docs runs as written (each page's python blocks, in order, in one namespace)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS_DATA = '"../shared/data"'      # where docs/attacks.md's snippets load the victim set from (the repo's layout)


def _blocks(page: Path) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))


@pytest.mark.needs_data("mnist-victims")
def test_attacks_page_snippets_run(monkeypatch, capsys, data_root):
    monkeypatch.chdir(REPO)                       # the snippets use paths relative to the repository root
    code = _blocks(REPO / "docs" / "attacks.md")
    assert code.count("\n") > 20
    # the page's example path -> the data folder of this run (FEDSIM_DATA_DIR, else the user cache), so the
    # snippets read the same files every other data test reads
    code = code.replace(DOCS_DATA, repr(str(data_root)))
    exec(compile(code, "docs/attacks.md", "exec"), {"__name__": "docs"})
    out = capsys.readouterr().out
    assert "eavesdropper: label" in out            # the last snippet's end-to-end reconstruction ran


def test_readme_library_example_runs(capsys):
    code = _blocks(REPO / "README.md")
    exec(compile(code, "README.md", "exec"), {"__name__": "docs"})
    accuracy, records = capsys.readouterr().out.split()[-2:]
    assert 0.5 < float(accuracy) <= 1 and int(records) > 0
