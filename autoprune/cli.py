"""The ``autoprune`` command line: parse, call one library function, map errors to exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune import cli_args as arg
from autoprune.cli_args import EXIT_USAGE
from autoprune.errors import AutopruneError, SpecError
from autoprune.model.formats import FORMATS
from autoprune.paths import artifacts_dir

if TYPE_CHECKING:
    import optuna

    from autoprune.search.storage.study import Opened

logger = logging.getLogger("autoprune")

EXIT_SIGINT, EXIT_SIGTERM = 130, 143
RESUME = "completed trials are kept; run the same command again to resume"
_INTERRUPTED = {  # what an interrupt means, per command
    "search": f"trials in flight are FAILED; {RESUME}",
    "finalize": "the fine-tune was stopped; nothing was written to --out (run it again)",
    "export": "nothing was written to --out (run it again)",
    "apply": "the pruned checkpoint was not written (run it again)",
    "dashboard": "the dashboard has stopped",
    "report": "no report was written",
    "front": "nothing was changed",
    "remeasure": "trials re-timed before the interrupt keep their new latency; the others are unchanged",
    "demo-baseline": "the baseline was not written",
}


_TERMINATED: list[int] = []  # set by the SIGTERM handler


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM unwinds the main thread exactly as Ctrl-C does (KeyboardInterrupt is what Ray's compiled code
    passes through cleanly); the CLI then reports it as SIGTERM."""
    _TERMINATED.append(signum)
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    from autoprune.config.sections import ESTIMATORS, LatencySettings, Resources
    from autoprune.config.spec import SearchSpec

    # each numeric flag is bounded as the spec key (or knob) it overrides
    trials, seed = (arg.setting(SearchSpec, k) for k in ("trials", "seed"))
    concurrent, cpus, gpus = (arg.setting(Resources, k) for k in ("concurrent", "cpus", "gpus"))
    rounds, spread, retries = (arg.setting(LatencySettings, k) for k in ("rounds", "max_spread", "retries"))

    p = arg.Parser(prog="autoprune", description="AutoML search for structured-pruning policies of YOLO detectors.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=arg.Parser)

    s = sub.add_parser("search", help="run or continue a pruning-policy search")
    s.add_argument("spec", help="search spec YAML (or an ultralytics data set YAML, with --model)")
    s.add_argument("--trials", type=trials, help="run exactly N new trials (default: fill the spec's budget)")
    s.add_argument("--budget", help="wall-clock budget of the whole run, e.g. 300, 30m, 2h (the spec's budget)")
    s.add_argument("--storage", help="study storage URL (default: sqlite file under studies/)")
    s.add_argument("--study-name", help="study name (default: the spec's name)")
    s.add_argument("--device", help="cpu, cuda or cuda:N")
    s.add_argument("--seed", type=seed)
    s.add_argument("--model", help="base model checkpoint (.pt) or model YAML")
    s.add_argument("--data", help="ultralytics data set YAML")
    s.add_argument("--studies-dir", type=Path, default=Path("studies"), help="home of study files (default studies/)")
    s.add_argument("--ray-address", help="join this Ray cluster (e.g. auto or ray://host:10001) instead of "
                                         "starting a local one")
    s.add_argument("--concurrent", type=concurrent, help="trials run at once")
    s.add_argument("--cpus-per-trial", type=cpus, help="CPUs Ray reserves per trial (fractions allowed)")
    s.add_argument("--gpus-per-trial", type=gpus, help="GPUs Ray reserves per trial, e.g. 0.5")
    s.add_argument("--trust-checkpoint", action="store_true", help="load the model with plain pickle (runs any code "
                   "in it; default: only ultralytics' and torch's classes are accepted)")

    def study_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("spec", nargs="?", help="the search spec (gives the study name and storage)")
        q.add_argument("--study", help="study name (default: the spec's, or the only study in the storage)")
        q.add_argument("--storage", help="study storage URL (default: sqlite file under studies/)")
        q.add_argument("--studies-dir", type=Path, default=Path("studies"))

    f = sub.add_parser("front", help="print a study's Pareto front with the baseline for comparison")
    study_args(f)
    f.add_argument("--format", choices=("table", "json", "csv"), default="table")

    r = sub.add_parser("remeasure", help="time the front (or --trial N) again against the base, interleaved, and "
                                         "correct the stored latencies (the old values stay in each trial's record)")
    study_args(r)
    r.add_argument("--trial", type=arg.nonneg_int, action="append", help="this trial (repeatable; default: the front)")
    r.add_argument("--rounds", type=rounds, help="alternating rounds (default: the trial's first timing's)")
    r.add_argument("--estimator", choices=ESTIMATORS, default="min",
                   help="the median round ratio of fastest passes (default), pooled fastest passes, or median")
    r.add_argument("--max-spread", type=spread, default=0.25,
                   help="time again while the round ratios spread more than this ((p90 - p10) / median)")
    r.add_argument("--retries", type=retries, default=2, help="re-timings before a ratio is marked unreliable")

    d = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    d.add_argument("--storage", help="study storage URL (default: sqlite file under studies/)")
    d.add_argument("--studies-dir", type=Path, default=Path("studies"))
    d.add_argument("--artifact-dir", type=Path, help="artifact store (default: STUDIES_DIR/artifacts)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=arg.port, default=8080)

    r = sub.add_parser("report", help="write a self-contained plotly HTML report of a study")
    study_args(r)
    r.add_argument("--out", type=Path, help="HTML file (default: dashboards/STUDY.html)")

    def chosen_trial_args(q: argparse.ArgumentParser) -> None:
        """The study, which trial (--trial, --best with --where, or --knee) and where its export goes."""
        study_args(q)
        pick = q.add_mutually_exclusive_group(required=True)
        pick.add_argument("--trial", type=arg.nonneg_int, help="this trial number")
        pick.add_argument("--best", metavar="METRIC", help="the best feasible completed trial by METRIC")
        pick.add_argument("--knee", action="store_true", help="the front member closest to the ideal point")
        q.add_argument("--where", action="append", default=[], metavar="COND",
                       help="with --best: a condition such as 'latency_ms<=4' (repeatable)")
        q.add_argument("--out", type=Path, required=True, help="output folder")
        q.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and its check")
        q.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="also a runtime's artifact (ONNX "
                       "Runtime INT8, OpenVINO FP32/INT8, TensorRT), its measured mAP and latency in policy.yaml")
        q.add_argument("--force", action="store_true", help="write into a non-empty --out folder")

    chosen_trial_args(sub.add_parser("export", help="export a chosen trial: policy.yaml, pruned.pt, pruned.onnx"))
    z = sub.add_parser("finalize", help="fine-tune a chosen trial with the full budget, report val/test mAP, export it")
    chosen_trial_args(z)
    length = z.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=arg.epochs, help="fine-tune epochs (the full budget)")
    length.add_argument("--time", type=arg.duration, help="wall-clock budget of the whole finalize, e.g. 600, 10m "
                                                         "(validations and export included; epochs follow from it)")
    z.add_argument("--lr", type=arg.knob("lr"), help="initial learning rate (default: the trial's)")
    z.add_argument("--data", help="data set YAML (default: the study's); its test split is reported when present")
    z.add_argument("--device", default="cpu")
    z.add_argument("--distill", action="store_true", help="distil from the study's unpruned base while fine-tuning")

    a = sub.add_parser("apply", help="re-apply an exported policy to its base model")
    a.add_argument("policy", help="policy.yaml from autoprune export")
    a.add_argument("--model", required=True, help="the base model checkpoint (.pt)")
    a.add_argument("--data", help="data set YAML (needed by --finetune and gradient criteria; also measures)")
    a.add_argument("--finetune", action="store_true", help="repeat the trial's prune steps and fine-tuning")
    a.add_argument("--force", action="store_true", help="apply even if the base model's fingerprint differs")
    a.add_argument("--device", default="cpu")
    a.add_argument("--trust-checkpoint", action="store_true", help="load the model with plain pickle (see search)")
    a.add_argument("--out", type=Path, required=True, help="pruned checkpoint to write (.pt)")

    b = sub.add_parser("demo-baseline", help="(re)train the demo baseline checkpoint")
    b.add_argument("--epochs", type=arg.epochs, default=80)
    b.add_argument("--out", type=Path, help="where to write it (default: the packaged demo checkpoint)")
    return p


def _cmd_search(args: argparse.Namespace) -> int:
    import time

    from autoprune.config.spec import Overrides, load_spec

    started = time.perf_counter()  # a budget counts from here
    spec = load_spec(args.spec, Overrides(trials=None, storage=args.storage, study_name=args.study_name,
                                          device=args.device, seed=args.seed, model=args.model, data=args.data,
                                          cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                                          concurrent=args.concurrent, budget=args.budget),
                     studies_dir=args.studies_dir)
    from autoprune.views.progress import ProgressBar

    if not args.verbose:  # importing Ray and Optuna configures their loggers anew (INFO): quiet them again
        import optuna
        import ray  # noqa: F401

        _quiet_ray()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per side study
    from autoprune.deploy.deliver import run

    bar = ProgressBar()
    try:
        ran = run(spec, started, max_new_trials=args.trials, ray_address=args.ray_address, progress=bar)
    finally:
        bar.close()
    outcome = ran.search
    study = outcome.study
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    from autoprune.model import records
    from autoprune.search.storage.study import masked

    print(f"study {study.study_name}: {', '.join(f'{v} {k.lower()}' for k, v in sorted(states.items()))}; "
          f"storage {masked(outcome.spec.storage_url)}")
    _print_front(study, outcome.store, "table")
    screening = records.screening(study)
    if screening:
        tau = screening.get("kendall_tau")
        print(f"screening: {screening['screened']} candidates screened; Kendall tau of screen vs final mAP50-95 "
              f"{'n/a' if tau is None else f'{tau:.2f}'} over {screening['pairs']} promoted trials")
    if ran.ledger.budget_s is not None:
        from autoprune.views.text import render_budget, render_deliveries

        print(render_budget(ran.ledger.to_dict()))
        for line in render_deliveries(records.deliveries(study), [t.label for t in spec.targets]):
            print(line)
    return 0


def _print_front(study: optuna.Study, store: Any, fmt: str) -> None:
    from autoprune.model import records
    from autoprune.search.storage.front import latency_checks, read_front, sync_front, with_delivered
    from autoprune.views.text import delivered_maps, delivered_trials, front_records, render_front

    sync_front(study, store)
    names, done = records.study_objectives(study), records.deliveries(study)
    rows = with_delivered(study, read_front(store.engine, study.study_name), delivered_maps(done))
    checks = latency_checks(study)
    for number, flags in sorted(checks.items()):
        logger.warning("trial %d: latency %s", number, "; ".join(flags))
    records_ = front_records(rows, names, records.baseline(study) or None, delivered_trials(done), checks,
                             records.references(study), delivered_maps(done))
    if fmt == "table":
        print(f"Pareto front of {study.study_name} ({len(rows)} trial(s)):")
    print(render_front(records_, names, fmt))


def _storage_url(args: argparse.Namespace) -> str:
    from autoprune.config.spec import default_storage_url

    return str(args.storage or default_storage_url(args.studies_dir))


def _existing_study(args: argparse.Namespace) -> Opened:
    from autoprune.config.spec import Overrides, load_spec
    from autoprune.search.storage.study import load_existing

    if args.spec:  # only the study's name and storage are used: no device or file checks
        spec = load_spec(args.spec, Overrides(storage=args.storage, study_name=args.study),
                         studies_dir=args.studies_dir)
        return load_existing(spec.storage_url, spec.name)
    return load_existing(_storage_url(args), args.study)


def _cmd_front(args: argparse.Namespace) -> int:
    _print_front(*_existing_study(args), args.format)
    return 0


def _cmd_remeasure(args: argparse.Namespace) -> int:
    from autoprune.deploy.remeasure import RemeasureSettings, remeasure

    study, store = _existing_study(args)
    done = remeasure(study, store, RemeasureSettings(args.rounds, args.estimator, args.max_spread, args.retries),
                     artifacts_dir(args.studies_dir), args.trial)
    for r in done:
        change = ", ".join(f"{k} {r.before[k]:.4g} -> {r.after[k]:.4g}" for k in r.after)
        print(f"trial {r.trial}: {change or 'no latency objective'} (round spread {r.spread:.2f}"
              f"{'; still unreliable' if r.unreliable else ''})")
    _print_front(store.load(study.study_name), store, "table")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from autoprune.views import write_report

    study, _ = _existing_study(args)
    out = write_report(study, args.out or Path("dashboards") / f"{study.study_name}.html")
    print(out)
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from autoprune.search.storage.study import check_database
    from autoprune.views.dashboard import serve_dashboard

    check_database(_storage_url(args))
    print(f"optuna-dashboard: http://{args.host}:{args.port}/", flush=True)
    serve_dashboard(_storage_url(args), args.artifact_dir or artifacts_dir(args.studies_dir), args.host, args.port)
    return 0


def _chosen_trial(args: argparse.Namespace) -> tuple[optuna.Study, Any, optuna.trial.FrozenTrial]:
    from autoprune.deploy.export import select_trial

    if args.where and not args.best:
        raise SpecError("--where needs --best METRIC")
    study, store = _existing_study(args)
    return study, store, select_trial(study, trial=args.trial, best=args.best, where=args.where, knee=args.knee)


def _cmd_export(args: argparse.Namespace) -> int:
    from autoprune.deploy.export import export_trial

    study, store, trial = _chosen_trial(args)
    res = export_trial(study, store, trial, args.out, onnx=not args.no_onnx, force=args.force,
                       artifact_dir=artifacts_dir(args.studies_dir), fmt=args.format)
    print(f"exported trial {res.trial} of {study.study_name} to {res.out_dir}")
    for path in (res.policy, res.checkpoint, res.onnx, res.tp_ratios):
        if path is not None:
            print(f"  {path}")
    if res.onnx_max_abs_diff is not None:
        print(f"ONNX vs torch max abs difference: {res.onnx_max_abs_diff:.3g}")
    _print_deployed(res.policy)
    return 0


def _print_deployed(policy: Path) -> None:
    from autoprune.model.document import load_policy_file
    from autoprune.views.text import render_deployed

    for line in render_deployed(load_policy_file(policy).deployed):
        print(line)


def _cmd_finalize(args: argparse.Namespace) -> int:
    from autoprune.deploy.finalize import FinalizeSettings, finalize_trial
    from autoprune.engine.devices import check_device
    from autoprune.model.document import load_policy_file

    settings = FinalizeSettings(epochs=args.epochs or FinalizeSettings.epochs, seconds=args.time, lr=args.lr,
                                data=args.data, device=check_device(args.device), distill=args.distill)
    study, store, trial = _chosen_trial(args)
    res = finalize_trial(study, store, trial, args.out, settings, onnx=not args.no_onnx, force=args.force,
                         artifact_dir=artifacts_dir(args.studies_dir), fmt=args.format)
    fin = load_policy_file(res.policy).finalize
    print(f"finalized trial {res.trial} of {study.study_name} ({fin['epochs']} epochs, {fin['optimizer_steps']} "
          f"optimizer steps) to {res.out_dir}")
    base = fin.get("baseline_map50_95")
    for split, m in fin["after"].items():
        tail = f" (base {base:.4f} on val)" if base and split == "val" else ""
        print(f"  {split}: mAP50-95 {fin['before'][split]['map50_95']:.4f} -> {m['map50_95']:.4f}{tail}")
    if fin.get("kept") == "start":
        print(f"  (the fine-tune lowered val to {fin['finetuned']['val']['map50_95']:.4f}: the start is delivered)")
    _print_deployed(res.policy)
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from autoprune.deploy.apply import apply_policy
    from autoprune.engine.devices import check_device

    res = apply_policy(args.policy, args.model, args.out, data=args.data, finetune=args.finetune,
                       force=args.force, device=check_device(args.device))
    print(f"{res.out}: {res.params:,} parameters, {len(res.channels)} prunable layers at the policy's channels")
    if res.metrics:
        m = res.metrics
        print(f"mAP50-95 {m['map50_95']:.4f}, mAP50 {m['map50']:.4f}, latency {m['latency_ms']:.2f} ms")
    return 0


def _cmd_demo_baseline(args: argparse.Namespace) -> int:
    from autoprune.demo.baseline import PACKAGED_BASELINE, train_baseline

    out = train_baseline(args.out or PACKAGED_BASELINE, epochs=args.epochs)
    print(out)
    return 0


def _quiet_ray() -> None:
    """Without -v Ray's own log lines (start-up banners, errors about Tune's experiment-state files, which
    autoprune never reads) stay out of the terminal; a Ray failure ends its trial FAILED with the reason."""
    logging.getLogger("ray").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("ray", "ultralytics", "matplotlib", "PIL", "alembic", "optuna"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if not args.verbose:
        _quiet_ray()
    signal.signal(signal.SIGTERM, _on_sigterm)
    if getattr(args, "trust_checkpoint", False):  # before ultralytics is first imported (it reads this once)
        os.environ["ULTRALYTICS_SAFE_LOAD"] = "0"
    try:
        commands = {"search": _cmd_search, "front": _cmd_front, "remeasure": _cmd_remeasure, "report": _cmd_report,
                    "dashboard": _cmd_dashboard, "export": _cmd_export, "apply": _cmd_apply, "finalize": _cmd_finalize,
                    "demo-baseline": _cmd_demo_baseline}
        return commands[args.command](args)
    except AutopruneError as e:
        sys.stderr.write(f"autoprune: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        how = "terminated (SIGTERM)" if _TERMINATED else "interrupted (SIGINT)"
        sys.stderr.write(f"autoprune: {how}: {_INTERRUPTED.get(args.command, 'nothing was written')}\n")
        code = EXIT_SIGTERM if _TERMINATED else EXIT_SIGINT
        if args.command == "search":  # a phase still timing must not outlive the interpreter
            from autoprune.search.execution.session import exit_if_phases_alive

            exit_if_phases_alive(code)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
