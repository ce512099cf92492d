"""`gloro-serve train | certify | export`: the offline commands (they need the `train` extra).

Every user error is one line on stderr and exit code 2, never a traceback; a training run that
collapses stops with one line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from models.architectures import ACTIVATIONS, ARCHITECTURES
from models.checkpoint import CheckpointError, TrainConfig
from models.collapse import TrainingCollapsed
from models.data import LOADERS, DataError
from models.losses import LOSSES
from models.schedules import EPS_RAMPS, LR_SCHEDULES


T = TypeVar("T")


class UsageError(ValueError):
    """Bad input from the user; reported as one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError, for the caller to print as one line (exit 2, no usage dump)."""

    def error(self, message: str) -> None:
        raise UsageError(message)


def _checked(text: str, convert: Callable[[str], T], ok: Callable[[T], bool], wanted: str) -> T:
    """``convert(text)`` if it converts and passes ``ok``, else argparse's error naming ``wanted``."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


FLOAT32_MAX = 3.4028234663852886e38  # torch keeps rates and weights in float32


def eps_value(text: str) -> float:
    return _checked(text, float, lambda v: math.isfinite(v) and v >= 0, "an eps: a finite number >= 0")


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v > 0, "a positive integer")


def positive_float(text: str) -> float:
    """A rate or weight: a finite number > 0 that float32 can hold."""
    return _checked(text, float, lambda v: 0 < v <= FLOAT32_MAX, "a positive finite number (float32)")


def fraction(text: str) -> float:
    return _checked(text, float, lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1")


def unit_interval(text: str) -> float:
    """A decay."""
    return _checked(text, float, lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")


def seed_value(text: str) -> int:
    """A random seed torch and numpy both take."""
    return _checked(text, int, lambda v: 0 <= v < 2**32, "a seed from 0 to 4294967295")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a GloRo net")
    d = TrainConfig()
    p.add_argument("--arch", dest="architecture", default=d.architecture, choices=sorted(ARCHITECTURES))
    p.add_argument("--activation", default=d.activation, choices=sorted(ACTIVATIONS))
    p.add_argument("--dataset", default=d.dataset, choices=sorted(LOADERS))
    p.add_argument("--data-dir", default=d.data_dir, help="folder with the data set files (default: %(default)s)")
    p.add_argument("--eps", type=eps_value, default=d.eps, help="eps to certify at (evaluation)")
    p.add_argument("--train-eps", type=eps_value, default=None, help="eps to train at (default: 1.5 x --eps)")
    p.add_argument("--eps-ramp", default=d.eps_ramp, choices=EPS_RAMPS)
    p.add_argument("--ramp-fraction", type=fraction, default=d.ramp_fraction, help="share of training spent ramping eps")
    p.add_argument("--loss", default=d.loss, choices=LOSSES)
    p.add_argument("--trades-lambda", type=positive_float, default=d.trades_lambda)
    p.add_argument("--lln", action="store_true", help="last-layer row normalisation")
    p.add_argument("--optimizer", default="adam", choices=["adam"])
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--power-steps", type=positive_int, default=d.power_steps,
                   help="power-iteration steps per training step for the estimated Lipschitz constant "
                        "(default: %(default)s; the gloro reference takes 5)")
    p.add_argument("--ema-decay", type=unit_interval, default=None,
                   help="keep an exponential moving average of the weights with this decay per step "
                        "(e.g. 0.999); the average is evaluated, checkpointed and exported")
    p.add_argument("--final-lr", type=positive_float, default=d.final_lr)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--seed", type=seed_value, default=d.seed)
    p.add_argument("--train-subset", type=positive_int, default=None, help="use only the first N training images")
    p.add_argument("--test-subset", type=positive_int, default=None, help="evaluate on the first N test images")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint/, log.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's (or exported model version's) weights "
                        "with a fresh optimiser and schedules "
                        "(same architecture, activation and data set)")
    p.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop this invocation after N epochs (schedules still span --epochs); resume later")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(parser=p)  # for given_options


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> frozenset[str]:
    """The dests of the options written out in `argv` (argparse fills in defaults, so its namespace
    cannot tell `--lr 0.001` from no --lr); a unique prefix counts, as argparse takes it."""
    options = parser._option_string_actions
    dests = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        matches = {id(a): a for s, a in options.items() if s == name} or \
            {id(a): a for s, a in options.items() if s.startswith(name)}
        if len(matches) == 1:
            dests.add(next(iter(matches.values())).dest)
    return frozenset(dests)


def _run_train(args: argparse.Namespace) -> int:
    from models.train import train

    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in known and v is not None})
    if args.train_eps is None:
        config.train_eps = round(1.5 * config.eps, 6)
    given = given_options(args.parser, args.argv) & known
    record = train(config, args.out, resume=args.resume, device=args.device,
                   progress=not args.no_progress, threads=args.threads, stop_after=args.stop_after,
                   given=given)
    print(json.dumps(record))
    return 0


def _certify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="clean accuracy and VRA of a checkpoint or exported model version, "
                                       "sound bound vs estimate")
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a model version folder (REPOSITORY/NAME/VERSION)")
    p.add_argument("--eps", type=eps_value, nargs="+", default=None, help="eps values (default: the training config's)")
    p.add_argument("--data-dir", default=None, help="test data folder (default: the training config's)")
    p.add_argument("--test-subset", type=positive_int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here (default: stdout)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of certified accuracy against eps")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _run_certify(args: argparse.Namespace) -> int:
    from models.certify import certify_checkpoint

    report = certify_checkpoint(args.checkpoint, args.eps, args.data_dir, args.test_subset, args.plot, args.device)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to a model repository entry (ONNX + manifest), "
                       "or re-export an exported version with this code")
    p.add_argument("checkpoint", type=Path, help="a training checkpoint folder or a model repository version folder")
    p.add_argument("--out", type=Path, required=True, help="REPOSITORY/NAME/VERSION")
    p.add_argument("--eps", type=eps_value, default=None, help="eps to certify at by default (default: the training config's)")
    p.add_argument("--data-dir", default=None, help="test data to measure accuracy and VRA on (default: the training config's)")
    p.add_argument("--test-subset", type=positive_int, default=None)
    p.add_argument("--train-command", default=None, help="recorded as provenance")
    p.add_argument("--force", action="store_true", help="replace a different model already in --out")


def _run_export(args: argparse.Namespace) -> int:
    from models.export import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, args.out, eps=args.eps, data_dir=args.data_dir,
                                 test_subset=args.test_subset, train_command=args.train_command, force=args.force)
    print(json.dumps({"out": str(args.out), "clean_accuracy": manifest["metrics"]["clean_accuracy"],
                      "vra": manifest["metrics"]["vra"], "sha256": manifest["onnx"]["sha256"]}))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "train": (_train_parser, _run_train),
    "certify": (_certify_parser, _run_certify),
    "export": (_export_parser, _run_export),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gloro-serve", description="Train, certify and export GloRo nets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # "gloro-serve train: error: ...", as the serve command says "gloro-serve: error: ..."
    prog = " ".join(["gloro-serve", *argv[:1]]) if argv[:1] and argv[0] in COMMANDS else "gloro-serve"
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv[1:]
        return COMMANDS[args.command][1](args)
    except (UsageError, DataError, CheckpointError, ValueError, OSError) as exc:  # OSError: a path it cannot write
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingCollapsed as exc:  # the run failed; its checkpoint is still the last sound epoch
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
