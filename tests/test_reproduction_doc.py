"""docs/REPRODUCTION.md cites commands that exist: every ``fedsim ...`` line parses with fedsim's own parser
(nothing is run), every ``python FILE`` names a file of the repository, and the reference numbers it quotes are
the specs' (where the spec files are present)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fedsim.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "REPRODUCTION.md"
SPECS = REPO.parent / "shared" / "specs"


def commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    lines = []
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)                      # continuation lines
        for line in text.splitlines():
            line = line.split("#")[0].strip().removeprefix("for s in 0 1 2 3 4 5 6 7 8 9; do").strip()
            if line and line not in ("done",):
                lines.append(line)
    return lines


def test_every_command_exists_and_parses():
    cmds = commands()
    assert sum(c.startswith("fedsim ") for c in cmds) >= 4 and sum(c.startswith("python ") for c in cmds) >= 3
    parser = build_parser()
    for cmd in cmds:
        argv = shlex.split(cmd.replace("$s", "0"))
        if argv[0] == "fedsim":
            args = parser.parse_args(argv[1:])                     # a usage error raises SystemExit
            assert args.func is not None, cmd
        else:
            assert argv[0] == "python" and (REPO / argv[1]).is_file(), cmd


@pytest.mark.skipif(not SPECS.is_dir(), reason="../shared/specs not present")
@pytest.mark.parametrize("spec, numbers", [
    ("fedpca.md", ["89.61", "93.74", "96.97", "67.88", "94.74", "83.73", "85.23", "14.55", "91.01", "83.55", "85.45",
                   "18.19"]),
    ("leakage.md", ["3.53 / 3.42 / 3.75", "0.0104 / 0.0096 / 0.0144", "0.0058 / 0.0030 / 0.0067"]),
])
def test_reference_numbers_are_the_specs(spec, numbers):
    text, page = (SPECS / spec).read_text(), PAGE.read_text()
    for n in numbers:
        assert n in text and n in page, n
