"""The ``autoprune`` command line: parse, call one library function, map errors to exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from autoprune.errors import AutopruneError

logger = logging.getLogger("autoprune")

EXIT_USAGE = 2


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"autoprune: error: {message}\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="autoprune", description="AutoML search for structured-pruning policies of YOLO detectors.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="run or continue a pruning-policy search")
    s.add_argument("spec", help="search spec YAML (or an ultralytics data set YAML, with --model)")
    s.add_argument("--trials", type=_positive_int, help="run exactly N new trials (default: fill the spec's budget)")
    s.add_argument("--storage", help="study storage URL (default: sqlite file under studies/)")
    s.add_argument("--study-name", help="study name (default: the spec's name)")
    s.add_argument("--device", help="cpu, cuda or cuda:N")
    s.add_argument("--seed", type=_nonneg_int)
    s.add_argument("--model", help="base model checkpoint (.pt) or model YAML")
    s.add_argument("--data", help="ultralytics data set YAML")
    s.add_argument("--studies-dir", type=Path, default=Path("studies"), help="home of study files (default studies/)")
    s.add_argument("--ray-address", help="join this Ray cluster (e.g. auto or ray://host:10001) instead of "
                                         "starting a local one")
    s.add_argument("--concurrent", type=_positive_int, help="trials run at once")
    s.add_argument("--cpus-per-trial", type=_positive_float, help="CPUs Ray reserves per trial (fractions allowed)")
    s.add_argument("--gpus-per-trial", type=_nonneg_float, help="GPUs Ray reserves per trial, e.g. 0.5")

    b = sub.add_parser("demo-baseline", help="(re)train the demo baseline checkpoint")
    b.add_argument("--epochs", type=_positive_int, default=80)
    b.add_argument("--out", type=Path, help="where to write it (default: the packaged demo checkpoint)")
    return p


def _cmd_search(args: argparse.Namespace) -> int:
    from autoprune.search import run_search
    from autoprune.spec import Overrides, load_spec

    spec = load_spec(args.spec, Overrides(trials=None, storage=args.storage, study_name=args.study_name,
                                          device=args.device, seed=args.seed, model=args.model, data=args.data,
                                          cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                                          concurrent=args.concurrent),
                     studies_dir=args.studies_dir)
    outcome = run_search(spec, max_new_trials=args.trials, ray_address=args.ray_address)
    from autoprune.report import front_table
    from autoprune.study import BASELINE_KEY, front

    study = outcome.study
    rows = front(study)
    states = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print(f"study {study.study_name}: {', '.join(f'{v} {k.lower()}' for k, v in sorted(states.items()))}; "
          f"storage {outcome.spec.storage_url}")
    print(f"Pareto front ({len(rows)} trial(s)):")
    print(front_table(rows, study.user_attrs.get(BASELINE_KEY)))
    return 0


def _cmd_demo_baseline(args: argparse.Namespace) -> int:
    from autoprune.demo.baseline import PACKAGED_BASELINE, train_baseline

    out = train_baseline(args.out or PACKAGED_BASELINE, epochs=args.epochs)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("ray", "ultralytics", "matplotlib", "PIL", "alembic", "optuna"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        if args.command == "search":
            return _cmd_search(args)
        return _cmd_demo_baseline(args)
    except AutopruneError as e:
        sys.stderr.write(f"autoprune: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("autoprune: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
