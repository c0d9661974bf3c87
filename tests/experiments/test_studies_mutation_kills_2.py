"""fedsim.studies on the cases the second mutation run found untested (docs/testing.md, "Surviving mutants").

Like test_studies_mutation_kills.py, each test checks behaviour a user of ``fedsim experiment`` or of the
results folder would notice, against an independent reference: the TOML file read back with ``tomllib``, the
files of a run folder read back, aggregates computed by hand with ``statistics``, or the rule stated in a
docstring. The toy study (a module written into a temporary folder) runs in milliseconds.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import types

import pytest

from fedsim import studies
from fedsim.config import tomllib

TOY = '''
"""A second toy study: one row and three curve rows per point, each a formula of the setting and the seed."""
import os
from pathlib import Path
from fedsim.studies import Point

NAME = "toy2"
DEFAULTS = {"name": "cpu", "seeds": [0, 1], "ks": [1, 2], "run": {}}
GROUP_BY = ("k",)
CURVE_X = "round"


def validate(cfg):
    pass


def points(cfg):
    return [Point.of(s, k=k) for k in cfg["ks"] for s in cfg["seeds"]]


def run_point(cfg, point, folder):
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "pid.txt").write_text(str(os.getpid()))
    log = Path(folder).parent / "order.txt"
    log.write_text((log.read_text() if log.exists() else "") + point.id + "\\n")
    k, s = point["k"], point.seed
    return {"rows": [{"k": k, "v": 10 * k + s}],
            "curves": [{"k": k, "round": t, "loss": k * t + s} for t in range(3)]}


def figures(cfg, groups, curves):
    return {}
'''

TOY_TOML = 'name = "cpu"\nseeds = [0, 1]\nks = [1, 2]\n\n[run]\n'


@pytest.fixture(scope="module")
def toy(tmp_path_factory, importable_study):
    """The toy study module, importable by name (as worker processes import a study)."""
    yield from importable_study(tmp_path_factory.mktemp("toy2_pkg"), "toy_study_mk2", TOY, "toy2", TOY_TOML)


# --- configs ----------------------------------------------------------------------------------------------------

def test_resolve_errors_say_whether_the_file_or_set_gave_the_bad_value():
    """A badly typed value is a ConfigError that starts with the key, prefixed by "--set " when it came from
    --set (and by nothing when it came from the config file), for plain keys and for tables alike."""
    from fedsim.config import ConfigError

    defaults = {"seeds": (0, 1), "run": {"a": 1}}
    for values, overrides, start in (({"seeds": [0.5]}, {}, "seeds must be a list of int"),
                                     ({}, {"seeds": [0.5]}, "--set seeds must be a list of int"),
                                     ({"run": 3}, {}, "run must be a table"),
                                     ({}, {"run": 3}, "--set run must be a table")):
        with pytest.raises(ConfigError) as e:
            studies.resolve(defaults, values, overrides)
        assert str(e.value).startswith(start)


def test_toml_text_reads_back_whatever_the_first_key_is():
    """toml_text reads back (tomllib) as the same values whether the first line is a key, including one that
    starts with a capital X, or a table header (a config of tables only)."""
    for values in ({"X": 1, "Xa": {"b": 2}}, {"Xy": "z"}, {"t": {"a": 1}, "u": {"v": {"w": True}}}):
        assert tomllib.loads(studies.toml_text(values)) == values


# --- the comments shown by --help -------------------------------------------------------------------------------

def test_toml_comments_keep_hashes_and_brackets_inside_a_comment(tmp_path):
    """toml_comments: a comment is everything after the first "#" (it may hold more "#"), also on the first line of
    a multi-line array; brackets inside a comment (an interval "[0, 1)") do not open an array, so the keys after
    the array keep their comments. tomllib reads the same file as the reference for what is a key."""
    path = tmp_path / "c.toml"
    path.write_text('rates = [   # each in [0, 1) # tuned by hand\n  0.1,\n  0.2,\n]\n'
                    'k = 3  # number of clients, see #12\n\n[run]\nseed = 1  # s\n')
    assert tomllib.loads(path.read_text()) == {"rates": [0.1, 0.2], "k": 3, "run": {"seed": 1}}
    assert studies.toml_comments(path) == {"rates": "each in [0, 1) # tuned by hand",
                                           "k": "number of clients, see #12", "run.seed": "s"}


def test_toml_comments_read_past_a_multi_line_string_with_a_bracket_line(tmp_path):
    """A line of a multi-line string that starts with "[" but is no table header (no "]") neither stops the comment
    reader nor changes the table of the keys after it."""
    path = tmp_path / "c.toml"
    path.write_text('note = """\n[draft: check the grid\n"""\nk = 1  # kay\n')
    assert tomllib.loads(path.read_text()) == {"note": "[draft: check the grid\n", "k": 1}
    assert studies.toml_comments(path) == {"k": "kay"}


# --- results folders --------------------------------------------------------------------------------------------

def test_overwrite_replaces_a_folder_that_holds_study_files_but_no_points(tmp_path):
    """claim_study_folder(overwrite=True) on a folder holding some study files but no points/ (e.g. a sweep
    stopped before its first point) removes them and keeps the user's other files."""
    (tmp_path / "config.toml").write_text('a = 1\n')
    (tmp_path / "metrics.csv").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    studies.claim_study_folder(tmp_path, 'a = 2\n', overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_costliest_points_start_first_by_a_cost_that_reads_the_config(toy, tmp_path, monkeypatch):
    """run_study orders the points by the study's ``cost(cfg, point)``, highest first, calling it with the resolved
    config (here a cost that depends on where the setting is listed in the config)."""
    monkeypatch.setattr(toy, "cost", lambda cfg, p: cfg["ks"].index(p["k"]), raising=False)
    run = studies.run_study(toy, overrides={"ks": [2, 3, 1], "seeds": [0]}, out=tmp_path / "o", progress=False)
    assert (run.out / "points" / "order.txt").read_text().split() == ["k1-s0", "k3-s0", "k2-s0"]


def test_load_results_reads_the_folder_run_study_writes_by_default(toy, tmp_path, monkeypatch):
    """load_results(NAME) with its defaults reads the metrics.json of the folder run_study writes by default
    (results/<NAME>/<name> under the working directory, the default config's run id being "cpu"); by default
    run_study runs the points serially in this process (no worker processes)."""
    monkeypatch.chdir(tmp_path)
    run = studies.run_study(toy, progress=False)
    assert run.config["name"] == "cpu"
    pids = {(run.out / "points" / p.id / "pid.txt").read_text() for p in toy.points(run.config)}
    assert pids == {str(os.getpid())}                    # by default the points run one after another, here
    assert studies.load_results("toy2") == json.loads((run.out / "metrics.json").read_text())


def test_curves_are_aggregated_over_seeds_without_a_seed_column(toy, tmp_path):
    """The curves (curves.csv, metrics.json "curves") have one row per setting and x, with the seed count and the
    spread of every curve metric over the seeds; the seed itself is not a metric of the curves. A study without
    ``summary`` (it is optional) gets no "summary" in metrics.json."""
    run = studies.run_study(toy, out=tmp_path / "o", progress=False)
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert "summary" not in metrics and len(metrics["curves"]) == 2 * 3
    for c in metrics["curves"]:
        assert set(c) == {"k", "round", "seeds", "loss"} and c["seeds"] == 2
        assert c["loss"] == studies.spread([c["k"] * c["round"] + s for s in (0, 1)])
    with open(run.out / "curves.csv") as f:
        header = next(csv.reader(f))
    assert header == ["k", "round", "seeds", *(f"loss_{s}" for s in ("mean", "std", "min", "max", "n", "of"))]


# --- running the points -----------------------------------------------------------------------------------------

def test_map_tasks_runs_serially_here_and_in_parallel_in_worker_processes():
    """map_tasks: by default, with one worker, or with a single task, every task runs in this process; with two
    workers and two tasks they run in worker processes (not in this one), one result per task."""
    me = os.getpid()
    assert list(studies.map_tasks(os.getpid, [(), ()], progress=False)) == [me, me]
    assert list(studies.map_tasks(os.getpid, [(), ()], workers=1, progress=False)) == [me, me]
    assert list(studies.map_tasks(os.getpid, [()], workers=3, progress=False)) == [me]
    pids = list(studies.map_tasks(os.getpid, [(), ()], workers=2, progress=False))
    assert len(pids) == 2 and me not in pids


def test_map_tasks_starts_at_most_workers_spawned_processes(monkeypatch):
    """map_tasks with workers: a pool of min(workers, tasks) processes (never more than asked, whatever the machine's
    CPU count), started with "spawn" (a fork of a process holding torch threads can hang); every result once."""
    from concurrent.futures import ProcessPoolExecutor

    pools = []

    class Recording(ProcessPoolExecutor):
        def __init__(self, max_workers=None, mp_context=None, **kwargs):
            pools.append((max_workers, mp_context.get_start_method() if mp_context is not None else None))
            super().__init__(max_workers, mp_context=mp_context, **kwargs)

    monkeypatch.setattr(studies, "ProcessPoolExecutor", Recording)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert sorted(studies.map_tasks(abs, [(-i,) for i in range(3)], workers=2, progress=False)) == [0, 1, 2]
    assert sorted(studies.map_tasks(abs, [(-i,) for i in range(3)], workers=5, progress=False)) == [0, 1, 2]
    assert pools == [(2, "spawn"), (3, "spawn")]


def test_map_tasks_shows_a_progress_bar_by_default(capsys):
    """map_tasks counts the finished tasks on a progress bar (stderr) unless progress=False."""
    assert list(studies.map_tasks(abs, [(-1,), (-2,)])) == [1, 2]
    assert "2/2" in capsys.readouterr().err
    assert list(studies.map_tasks(abs, [(-1,), (-2,)], progress=False)) == [1, 2]
    assert capsys.readouterr().err == ""


# --- Ray (a stand-in module) ------------------------------------------------------------------------------------

class FakeRay:
    """Just enough of Ray for ``_ray_map``; records the environment Ray is started with."""

    def __init__(self):
        self.initialized, self.env_at_init = False, None

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.env_at_init = dict(os.environ)
        self.initialized = True

    def shutdown(self):
        self.initialized = False

    def remote(self, **options):
        return lambda fn: types.SimpleNamespace(remote=lambda *args: (fn, args))

    def wait(self, pending, num_returns):
        return pending[:num_returns], pending[num_returns:]

    def get(self, ref):
        return ref[0](*ref[1])


def test_ray_is_started_with_gpus_left_as_they_are_set(monkeypatch):
    """Ray started by map_tasks sees RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 (Ray's switch for not hiding the GPUs
    from tasks that ask for none, as fedsim's do), unless the user set it: then their value is kept."""
    name = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"
    for preset, want in ((None, "0"), ("1", "1")):
        fake = FakeRay()
        monkeypatch.setitem(sys.modules, "ray", fake)
        if preset is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, preset)
        assert list(studies.map_tasks(abs, [(-2,)], ray="local", progress=False)) == [2]
        assert fake.env_at_init[name] == want


# --- figures ----------------------------------------------------------------------------------------------------

def test_band_plot_bands_keep_their_lines_colour_on_axes_that_already_hold_a_line():
    """band_plot on axes where a reference line was drawn first: each band is still the colour of its own line
    (not the next colour of matplotlib's cycle for patches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])                                   # a reference line, in the cycle's first colour
    groups = [{"s": s, "x": x, "y": studies.spread([x + i, x + i + 1.0])} for i, s in enumerate("ab") for x in (0, 1)]
    studies.band_plot(ax, groups, "x", "y", "s")
    lines, bands = ax.get_lines()[1:], ax.collections
    assert len(lines) == len(bands) == 2
    for line, band in zip(lines, bands):
        assert band.get_facecolor()[0][:3].tolist() == list(matplotlib.colors.to_rgb(line.get_color()))
    plt.close(fig)


def test_a_result_without_curves_still_aggregates(toy, tmp_path):
    """A point's result.json without a "curves" entry (written by a fedsim from before curves were kept, or by hand)
    is collected as its rows and no curve rows, not an error."""
    points = [studies.Point.of(s, k=1) for s in (0, 1)]
    for p in points:
        folder = tmp_path / "points" / p.id
        folder.mkdir(parents=True)
        result = {"point": p.id, "seed": p.seed, "rows": [{"k": 1, "v": p.seed}]}
        (folder / "result.json").write_text(json.dumps(result))
    rows, curves = studies.collect(points, tmp_path)
    assert rows == [{"k": 1, "v": 0, "seed": 0}, {"k": 1, "v": 1, "seed": 1}] and curves == []


@pytest.mark.parametrize("text, want", [
    # a string with an unbalanced bracket is no array: the keys after it keep their comments
    ('label = "acc in [0, 1)"  # the y label\nk = 3  # kay\n', {"label": "the y label", "k": "kay"}),
    ("path = 'C:\\\\x [old'  # literal\nk = 3  # kay\n", {"path": "literal", "k": "kay"}),
    # a "[x]" line inside a multi-line string is no table header
    ('doc = """\n[x]\n# not a comment\n"""  # after\nk = 1  # kay\n[run]\nseed = 2  # s\n',
     {"k": "kay", "run.seed": "s"}),
    ("doc = '''\n[x] # no\n'''\nk = 1  # kay\n", {"k": "kay"}),
    # an escaped quote does not end a basic string
    ('q = "say \\"[\\" # no"  # yes\nk = 1  # kay\n', {"q": "yes", "k": "kay"}),
    ('"quoted.key" = 1  # qk\n', {'"quoted.key"': "qk"}),
])
def test_toml_comments_mask_strings(tmp_path, text, want):
    """toml_comments against what tomllib reads: brackets, "#" and table-like lines inside strings (basic, literal,
    multi-line, escaped quotes) are string content, not arrays, comments or tables."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    tomllib.loads(text)                                    # valid TOML
    assert studies.toml_comments(path) == want
