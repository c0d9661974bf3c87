"""``fedsim experiment`` and ``fedsim quickstart``: the commands that run experiments/ (its studies, its configs,
the tour). ``fedsim.cli`` finds them through the ``fedsim.commands`` entry points; fedsim never imports experiments/."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from fedsim.cli import add_run_options, apply_run_options, finish_runs, format_table, run_one, summarize

STUDY_HINT = "; run the same command again to resume (finished points are kept)"


EXPERIMENT_DESCRIPTION = (
    "Run a study: its config's grid x seeds, each point in its own folder\n"
    "(results/<study>/<run-id>/points/; finished points are skipped, an interrupted\n"
    "sweep resumes), then mean and spread over seeds in metrics.csv / metrics.json\n"
    "and figures (PNG, SVG). --list shows the studies; fedsim experiment NAME --help\n"
    "describes one.")


class StudyHelp(argparse._HelpAction):
    """``-h/--help`` of ``fedsim experiment``: after a study NAME, the study's own help (``fedsim.studies.help_text``:
    what it does, its CPU time, its ``--set`` keys and defaults) above the options; without one, the command's."""

    def __call__(self, parser, namespace, values, option_string=None):
        name = getattr(namespace, "name", None)
        if name is None:
            parser.print_help()
            parser.exit()
        import experiments
        from fedsim import studies
        from fedsim.config import ConfigError

        try:
            text = studies.help_text(experiments.study(name))
        except ConfigError as e:
            parser.exit(2, f"fedsim: error: {e}\n")
        saved = parser.description, parser.usage
        parser.description = f"fedsim experiment {name}: {experiments.STUDIES[name][1]}.\n\n{text}"
        parser.usage = f"{parser.prog} {name} [options]"
        try:
            parser.print_help()
        finally:
            parser.description, parser.usage = saved
        parser.exit()


def register(subparsers) -> None:
    """Add ``fedsim experiment`` to the ``fedsim`` command line (the sub-parsers action of ``fedsim.cli``)."""
    p = subparsers.add_parser(
        "experiment", help="run a study of experiments/ (a sweep over seeds and settings)", add_help=False,
        description=EXPERIMENT_DESCRIPTION)
    p.add_argument("-h", "--help", action=StudyHelp,
                   help="show this help and exit; after NAME: what the study does, how long its CPU default "
                        "takes and the keys --set accepts, with their defaults")
    p.add_argument("name", nargs="?", help="the study (see --list)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--config", help="study config TOML (default: experiments/configs/NAME.toml, the CPU-sized one; "
                                    "NAME_full.toml is the full-size one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a study key (--set seeds=[0]) or a key of its [run] table (--set "
                        "run.algorithm.lr=0.05); repeatable (default: none)")
    p.add_argument("--out", help="results folder (default: results/NAME/<the config's name>)")
    p.add_argument("--workers", type=int, default=1, help="points run in parallel processes")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the points as Ray tasks: on a local Ray instance, or on the cluster at ADDRESS (its "
                        "machines need fedsim and must share the results folder) (default: no Ray)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run of another config in the results folder (removes only the study's files "
                        "and points/; without it such a folder is refused)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_experiment, interrupt_hint=STUDY_HINT)


def register_quickstart(subparsers) -> None:
    """Add ``fedsim quickstart`` (the digits runs and the tour, experiments/tour.py) to the ``fedsim`` command line."""
    p = subparsers.add_parser(
        "quickstart", help="a tour: FedAvg vs gossip, corrected gossip, federated PCA, DIA; report.md",
        description="Runs FedAvg (star) and D-PSGD (ring; random 4-regular with a Dirichlet split) "
                    "on scikit-learn's bundled digits (table + plot), then the tour: plain vs "
                    "variance-corrected gossip (digits, 3 seeds), federated PCA anomaly detection on "
                    "NSL-KDD (honest threshold) and the Dropout Inversion Attack on MNIST victims; "
                    "writes <out>/report.md with every headline number and figure. About 15-30 s on "
                    "one CPU thread.")
    p.add_argument("--out", default="results/quickstart", help="output folder")
    p.add_argument("--rounds", type=int, help="rounds of every run, the tour's gossip runs included (default: "
                                             "each config's own; the gossip comparison 150)")
    p.add_argument("--parts", default="all",
                   help="tour parts after the digits runs: all, none, or a comma list of gossip (plain vs variance-"
                        "corrected), fedpca (NSL-KDD), attack (DIA on MNIST victims); parts without their data skip "
                        "with a note")
    p.add_argument("--iterations", type=int, help="iterations of the tour's attacks (default: 300)")
    add_run_options(p)
    p.set_defaults(func=cmd_quickstart, locks_out=True)


def cmd_experiment(args) -> int:
    """``fedsim experiment NAME``: run a study of experiments/ (fedsim.studies) and print its summary."""
    import experiments
    from fedsim import studies
    from fedsim.config import ConfigError

    if args.list or args.name is None:
        if args.name is None and not args.list:
            raise ConfigError("give a study NAME (fedsim experiment --list shows them)")
        width = max(map(len, experiments.STUDIES))
        for name, (_, what) in experiments.STUDIES.items():
            print(f"{name:{width}s}  {what}")
        return 0
    study = experiments.study(args.name)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and args.ray is not None:
        raise ConfigError("--workers and --ray exclude each other (Ray runs as many points at once as it has CPUs)")
    overrides = dict(studies.parse_set(s) for s in args.set or [])
    start = time.perf_counter()
    run = getattr(study, "run_study", None) or (lambda **kw: studies.run_study(study, **kw))
    done = run(config=args.config, overrides=overrides, out=args.out, workers=args.workers, ray=args.ray,
               progress=not args.no_progress, overwrite=args.overwrite)
    summary = getattr(study, "summary", None)
    if summary is not None:
        print("\n".join(summary(done.config, done.groups)))
    pngs = ", ".join(p.name for p in done.figures if p.suffix == ".png")
    print(f"\n{done.ran} of {done.total} point(s) run in {time.perf_counter() - start:.0f} s; results in {done.out}"
          + (f" (metrics.csv, metrics.json, {pngs})" if pngs else ""))
    return 0


def cmd_quickstart(args) -> int:
    """``fedsim quickstart``: the three digits runs (table, plot), then the tour's parts and report.md."""
    from fedsim.config import load

    names = ["quickstart_fedavg.toml", "quickstart_gossip.toml", "quickstart_gossip_dirichlet.toml"]
    out_dir = Path(args.out)
    rows, results, cfgs = [], {}, []
    for name in names:
        with resources.as_file(resources.files("experiments") / "configs" / name) as path:
            cfg = apply_run_options(load(path), args)
        if args.rounds is not None:
            from fedsim.config import replace

            cfg = replace(cfg, {"rounds": args.rounds})
        cfgs.append(cfg)
    parts = _quickstart_parts(args.parts)
    if args.iterations is not None and args.iterations < 1:
        from fedsim.config import ConfigError

        raise ConfigError(f"--iterations must be >= 1, got {args.iterations}")
    plan = _quickstart_plan(cfgs, out_dir, args.resume, args.overwrite)
    for cfg, overwrite in plan:
        result, seconds = run_one(cfg, out_dir / cfg.name, args.resume, not args.no_progress, overwrite)
        rows.append(summarize(cfg.name, cfg, result, seconds))
        results[cfg.name] = result
    print("fedsim quickstart: scikit-learn digits (1,437 train / 360 test), MLP 64-32-10, 10 clients\n")
    finish_runs(rows, results, out_dir, "fedsim quickstart: FedAvg vs decentralized SGD on digits", cfgs)
    return _quickstart_tour(args, parts, out_dir, rows)


QUICKSTART_PARTS = ("gossip", "fedpca", "attack")


def _quickstart_parts(text: str) -> list[str]:
    """The tour parts named by --parts ("all", "none" or a comma list of QUICKSTART_PARTS)."""
    from fedsim.config import ConfigError

    if text.strip() in ("all", "none"):
        return list(QUICKSTART_PARTS) if text.strip() == "all" else []
    parts = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in parts if t not in QUICKSTART_PARTS] or ([] if parts else [text])
    if bad:
        raise ConfigError(f"unknown --parts entry {bad[0]!r}; known: all, none, {', '.join(QUICKSTART_PARTS)}")
    return parts


def _quickstart_tour(args, parts: list[str], out_dir: Path, rows: list[dict]) -> int:
    """The tour after the digits runs: gossip rules, federated PCA, an attack; report.md with every headline number."""
    import dataclasses

    from experiments import tour

    settings = tour.TourSettings()
    if args.rounds is not None:
        settings = dataclasses.replace(settings, gossip_rounds=args.rounds)
    if args.iterations is not None:
        settings = dataclasses.replace(settings, attack_iterations=args.iterations)
    started = time.perf_counter()
    earlier = tour.earlier_parts(out_dir, [p for p in QUICKSTART_PARTS if p not in parts])
    done = tour.run_tour(out_dir, settings, args.data_dir, parts,
                         on_part=lambda name: print(f"  tour: {name} ...", file=sys.stderr, flush=True))
    runs = tour.runs_part(rows, sum(r["seconds"] for r in rows))
    for part in done:
        if part.skipped:
            print(f"fedsim: note: {part.note}", file=sys.stderr)
            continue
        print(f"\n{part.title} ({part.seconds:.1f} s): {part.setting}\n")
        print(format_table(part.rows, part.columns))
    order = {name: i for i, name in enumerate(QUICKSTART_PARTS)}
    report = tour.write_report(out_dir, [runs, *sorted([*done, *earlier], key=lambda p: order[p.name])])
    kept = f" ({', '.join(p.name for p in earlier)}: from the earlier tour in this folder)" if earlier else ""
    print(f"\ntour: {time.perf_counter() - started:.0f} s; report: {report}{kept}")
    return 0


def _quickstart_plan(cfgs, out_dir: Path, resume: bool, overwrite: bool) -> list:
    """(config, overwrite) per quickstart run, after checking every folder (so a refusal leaves all unchanged).

    A sub-folder that holds a run of the same quickstart config (``rounds``, threads, device may differ) is
    the quickstart's own and is run again; one that holds a different run is refused unless ``overwrite``.
    ``out_dir`` itself holding a single run (config.toml, history, checkpoint) is refused likewise.
    """
    from fedsim.config import to_toml
    from fedsim.experiment import check_run_folder
    from fedsim.runs import RunFolderError, clear_run, folder_changes, run_files

    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other")
    single = [f for f in run_files(out_dir) if f not in ("summary.txt", "accuracy.png", "diagnostics.png")]
    if single and not overwrite:
        raise RunFolderError(f"{out_dir} holds a single run ({', '.join(single)}), not quickstart results; "
                             "pass --overwrite to replace it, or choose another --out")
    plan = []
    for cfg in cfgs:
        sub = out_dir / cfg.name
        own = not resume and bool(run_files(sub)) and folder_changes(sub, to_toml(cfg)) == []
        check_run_folder(cfg, sub, resume=resume, overwrite=overwrite or own)
        plan.append((cfg, overwrite or own))
    if single:
        clear_run(out_dir)
    return plan
