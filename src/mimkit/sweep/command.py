"""``mimkit sweep``'s command line: the parser, and the run that checks everything before any trial starts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mimkit.sweep.space import EvalSpec, SweepSpec, check, parse_setting

log = logging.getLogger("mimkit")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be integers separated by commas, got {text!r}") from None


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be fractions separated by commas, got {text!r}") from None


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    """``mimkit sweep [DIR] KEY=A,B ... [--config C ...] [--minutes M | --steps S]``: the folder and the
    settings in one block (argparse reads positional arguments once)."""
    p = subparsers.add_parser(
        "sweep",
        help="a grid or a search over config keys: each trial pretrained for the same budget, scored alike",
    )
    p.add_argument(
        "settings", nargs="*", metavar="[DIR] KEY=VALUE",
        help="a folder of images, then settings: key=a,b,c is swept, key=low:high[:log] searched, key=v set",
    )  # fmt: skip
    p.add_argument(
        "--config", "-c", action="append", default=[],
        help="a recipe; given several times (--config A --config B), the preset of each method.name",
    )  # fmt: skip
    p.add_argument("--out", "-o", help="the sweep directory (default runs/sweep_<recipe or folder name>)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="wall-clock pretraining budget of each run")
    budget.add_argument(
        "--steps", type=int, help="optimizer steps of each run: the recipe's schedule, cut there"
    )
    p.add_argument("--seeds", type=_ints, default=[0], help="seeds of every setting, e.g. 0,1 (default 0)")
    p.add_argument("--trials", type=int, help="trials of a search (ranges), earlier invocations' included")
    p.add_argument(
        "--prune", action=argparse.BooleanOptionalAction, default=None,
        help="stop trials whose online kNN is below the median at the same epoch (default: searches only)",
    )  # fmt: skip
    p.add_argument(
        "--gpus", type=_ints, help="one trial per GPU at a time, e.g. 0,1 (default: one after another)"
    )
    p.add_argument("--objective", default="linear", help="what is maximised: knn, linear or finetune")
    p.add_argument("--pool", default="token", choices=["token", "avg"], help="features of kNN and linear")
    p.add_argument("--k", type=int, default=20, help="neighbours of the kNN score (default 20)")
    p.add_argument("--train-limit", type=int, help="score with at most N training images")
    p.add_argument("--test-limit", type=int, help="score on at most N test images")
    p.add_argument(
        "--finetune", type=_fractions, default=[], help="label fractions to fine-tune at, e.g. 0.01,0.1"
    )
    # one value each (repeat the option): a list would swallow the settings that follow it
    p.add_argument(
        "--linear-set", action="append", default=[], metavar="KEY=VALUE", help="a linear-probe setting"
    )
    p.add_argument(
        "--finetune-set", action="append", default=[], metavar="KEY=VALUE", help="a fine-tuning setting"
    )


def spec_from_args(args: argparse.Namespace) -> tuple[SweepSpec, Path]:
    """The sweep the arguments describe, and its directory (nothing is written)."""
    folders = [s for s in args.settings if "=" not in s]
    if len(folders) > 1:
        raise ValueError(f"sweep takes one folder of images, got {', '.join(folders)}")
    folder = folders[0] if folders else None
    axes, fixed = [], []
    for item in (s for s in args.settings if "=" in s):
        axis = parse_setting(item)
        axes.append(axis) if axis is not None else fixed.append(item)
    evaluation = EvalSpec(
        pool=args.pool, k=args.k, train_limit=args.train_limit, test_limit=args.test_limit,
        linear=tuple(args.linear_set), finetune=tuple(args.finetune), finetune_set=tuple(args.finetune_set),
        objective=args.objective,
    )  # fmt: skip
    spec = SweepSpec(
        configs=tuple(args.config), folder=folder, overrides=tuple(fixed), axes=tuple(axes),
        seeds=tuple(args.seeds), minutes=args.minutes, steps=args.steps, eval=evaluation,
    )  # fmt: skip
    name = Path(args.config[0]).stem if args.config else Path(folder).resolve().name
    return spec, Path(args.out or Path("runs") / f"sweep_{name}")


def run_sweep_command(args: argparse.Namespace) -> dict[str, Any]:
    """Check every point, then run the sweep; prints its table and the best setting."""
    spec, out = spec_from_args(args)
    points = check(spec, out)  # before any directory is made
    try:
        from mimkit.sweep.study import run_sweep
    except ModuleNotFoundError as err:
        if err.name != "optuna":
            raise
        raise ImportError(f"mimkit sweep needs Optuna ({err}): pip install 'mimkit[sweep]'") from None
    log.info("sweep: %d setting(s) checked; the sweep lives in %s", points, out)
    result = run_sweep(spec, out, trials=args.trials, prune=args.prune, gpus=args.gpus)
    print(result["table"].read_text(), end="")
    print(f"table: {result['table']} and {result['csv']}; {result['ran']} trial(s) ran now")
    return result
