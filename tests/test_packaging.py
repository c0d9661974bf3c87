"""The wheel: distribution name fedsim-lab (the name fedsim on PyPI is an unrelated 2022 simulator), version from
fedsim.__version__, the configs the CLI needs inside, and a fresh environment that runs the CLI from it.

Slow (~15 s): builds a wheel from a copy of the sources (``pip wheel . --no-deps --no-build-isolation``: no
network, nothing written into the checkout), installs it with ``--no-deps`` into a new virtual environment that
sees this environment's dependencies (torch, numpy, ...) through a .pth file but not its editable fedsim, and runs
a probe of the installed distribution and a one-round ``fedsim quickstart --parts none`` there, which reads the
shipped configs. Needs setuptools >= 70.1 in this environment (the dev extra; older ones need the wheel package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import fedsim

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("fedsim", "topologies", "attacks", "experiments", "pyproject.toml", "README.md")


def build_wheel(dest: Path) -> Path:
    src = dest / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dest / "dist")], cwd=src, check=True, capture_output=True, timeout=300)
    (wheel,) = (dest / "dist").glob("*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_ships_the_configs_and_runs_in_a_fresh_environment(tmp_path):
    wheel = build_wheel(tmp_path)
    assert wheel.name == f"fedsim_lab-{fedsim.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"fedsim_lab-{fedsim.__version__}.dist-info/METADATA").decode()
        entry = z.read(f"fedsim_lab-{fedsim.__version__}.dist-info/entry_points.txt").decode()
    assert "Name: fedsim-lab\n" in meta and f"Version: {fedsim.__version__}\n" in meta
    assert "fedsim = fedsim.cli:main" in entry
    commands = entry.split("[fedsim.commands]\n", 1)[1].split("\n\n")[0].splitlines()   # quickstart, below, uses one
    assert sorted(commands) == ["attack = attacks.cli:register", "experiment = experiments.cli:register",
                                "quickstart = experiments.cli:register_quickstart"]
    configs = {f"experiments/configs/{p.name}" for p in (REPO / "experiments" / "configs").glob("*.toml")}
    assert configs and configs <= names, sorted(configs - names)
    apps = {p.relative_to(REPO).as_posix() for p in (REPO / "fedsim" / "flower").glob("**/pyproject.toml")}
    assert apps <= names, sorted(apps - names)                       # the Flower app folder's pyproject
    assert {"experiments/tour.py", "topologies/drawing.py", "attacks/experiment.py"} <= names
    assert not any(n.startswith(("tests/", "notebooks/", "mutants/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co, not the editable fedsim
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FEDSIM_DATA_DIR")}
    env["MPLBACKEND"] = "Agg"
    probe = subprocess.run([str(py), "-c", "import fedsim, importlib.metadata as m; "
                            "print(fedsim.__file__); print(m.version('fedsim-lab'))"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    where, version = probe.stdout.split()
    assert Path(where).is_relative_to(site) and version == fedsim.__version__
    exe = env_dir / ("Scripts/fedsim.exe" if os.name == "nt" else "bin/fedsim")
    run = subprocess.run([str(exe), "quickstart", "--parts", "none", "--rounds", "1", "--no-progress"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (work / "results" / "quickstart" / "summary.txt").is_file()
    shown = subprocess.run([str(exe), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "unavailable" not in shown.stdout, shown.stdout + shown.stderr
    for command in ("attack", "experiment", "quickstart"):                  # the entry points of the wheel
        assert f"\n    {command}" in shown.stdout, command
