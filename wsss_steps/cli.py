"""The command-line convention every step follows.

Each step module has ``build_parser() -> ArgumentParser`` (made by `step_parser`, so ``--help``
shows the module's docstring) and ``main(argv) -> int``. The argument groups below are the only
definitions of the options steps share, with the same names and defaults everywhere:

- files: ``--manifest`` (the split), ``--out``; shard steps add ``--shard`` / ``--num-shards``;
- run: ``--device`` (auto), ``--threads`` (torch's choice when not given); training adds
  ``--num-workers``; training and network inference add ``--precision`` and ``--channels-last``;
- checkpoint (training steps): ``--checkpoint-dir``, ``--checkpoint-every``, ``--stop-after-epochs``.

Steps log to stderr; the workflow's rules redirect it into ``logs/`` (there is no ``--log``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the loop load only in the steps that run a network
    import torch

    from wsss_steps.training.loop import LoopSettings


def step_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of step ``module`` (``__name__`` of the step), described by its docstring.

    A step run as a program (``python -m wsss_steps.<step>``: its ``__name__`` is ``__main__``)
    also reports a file it may not write as one line (`report_path_errors_in_one_line`)."""
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
        report_path_errors_in_one_line()
    name = module.removesuffix(".__main__")
    return argparse.ArgumentParser(prog=f"python -m {name}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


# OSErrors about a path that say all there is to say (an unwritable or read-only results folder,
# a path through a file): one line naming the path, instead of a traceback through the step.
PATH_ERRORS = {
    errno.EACCES: "check the folder's permissions, or choose another results folder",
    errno.EPERM: "check the folder's permissions, or choose another results folder",
    errno.EROFS: "the filesystem is mounted read-only; choose another results folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def path_error_line(error: BaseException) -> str | None:
    """The one-line report of an OSError in `PATH_ERRORS` that names its path; else None."""
    if not isinstance(error, OSError) or error.errno not in PATH_ERRORS or error.filename is None:
        return None
    paths = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{_step_name()}: error: {error.strerror}: {paths} ({PATH_ERRORS[error.errno]})"


def _step_name() -> str:
    return Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "wsss_steps"


ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]


def report_path_errors_in_one_line() -> None:
    """Makes an uncaught `PATH_ERRORS` OSError print `path_error_line`, and a `DatasetError` its
    message (exit status 1, as for any uncaught error), instead of a traceback; other errors keep
    theirs. Installed once."""
    previous: ExceptHook = sys.excepthook
    if getattr(previous, "reports_path_errors", False):
        return

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        from wsss_steps.data.manifest import DatasetError  # noqa: PLC0415 (only when a step fails)

        line = path_error_line(error)
        if line is None and isinstance(error, DatasetError):  # its message names the file or id
            line = f"{_step_name()}: error: {error}"
        if line is None:
            previous(kind, error, traceback)
        else:
            print(line, file=sys.stderr)

    hook.reports_path_errors = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def add_shard_arguments(parser: argparse.ArgumentParser, out_help: str = "output shard file (.h5)"
                        ) -> argparse._ArgumentGroup:
    """``--manifest``, ``--out``, ``--shard``, ``--num-shards``: one shard of a split's images."""
    files = parser.add_argument_group("files")
    files.add_argument("--manifest", required=True, type=Path,
                       help="split manifest CSV written by prepare_data")
    files.add_argument("--out", required=True, type=Path, help=out_help)
    files.add_argument("--shard", type=int, default=0, help="0-based shard index (default: %(default)s)")
    files.add_argument("--num-shards", type=int, default=1, help="(default: %(default)s)")
    return files


DATA_WORKERS_VARIABLE = "WSSS_DATA_WORKERS"
PRECISION_CHOICES = ("fp32", "bf16", "fp16")  # = training.loop.PRECISIONS (that module imports torch)


def add_run_arguments(parser: argparse.ArgumentParser, training: bool = False,
                      numerics: bool | None = None) -> argparse._ArgumentGroup:
    """``--device`` and ``--threads``, ``--num-workers`` for training steps, and ``--precision`` and
    ``--channels-last`` where ``numerics`` (default: for training steps); returned so a step can add
    its own run options."""
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    if training:
        # The workflow sets the environment variable (config resources.data_workers, through the
        # shell prefix): the weights do not depend on it, so it stays out of the rules' command
        # lines, whose text Snakemake's `code` trigger compares.
        run.add_argument("--num-workers", type=int, default=int(os.environ.get(DATA_WORKERS_VARIABLE, "0")),
                         help=f"data-loading worker processes; the weights do not depend on it; 0 loads "
                         f"in this process (default: ${DATA_WORKERS_VARIABLE}, else 0: %(default)s)")
    if training if numerics is None else numerics:
        run.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                         help="the networks' arithmetic: fp32, or bf16 / fp16 autocast (fp16 training with "
                         "a gradient scaler); recorded in the outputs' identity (default: %(default)s)")
        run.add_argument("--channels-last", action="store_true",
                         help="the networks in the channels-last memory format (faster convolutions on "
                         "most GPUs; other float rounding); recorded in the outputs' identity")
    return run


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The resume options of training steps."""
    group = parser.add_argument_group("checkpoints")
    group.add_argument("--checkpoint-dir", type=Path,
                       help="folder for last.pt; a run resumes from it when its settings match")
    group.add_argument("--checkpoint-every", type=int, default=1,
                       help="epochs between checkpoints (default: %(default)s)")
    group.add_argument("--stop-after-epochs", type=int, metavar="N",
                       help="stop after N epochs of this run (checkpointed, no model file); "
                       "a rerun resumes; for time-limited jobs")
    return group


def check_shard(args: argparse.Namespace, step: str) -> None:
    if args.num_shards < 1 or not 0 <= args.shard < args.num_shards:
        raise SystemExit(f"{step}: need 0 <= --shard < --num-shards, got {args.shard} of {args.num_shards}")


def check_checkpoint(args: argparse.Namespace) -> list[str]:
    """The problems of the checkpoint options (for a step's list of argument errors)."""
    problems = []
    if args.checkpoint_every < 1:
        problems.append(f"--checkpoint-every must be ≥ 1, not {args.checkpoint_every}")
    if args.stop_after_epochs is not None and (args.stop_after_epochs < 1 or args.checkpoint_dir is None):
        problems.append("--stop-after-epochs needs a value ≥ 1 and --checkpoint-dir")
    return problems


def loop_settings(args: argparse.Namespace, name: str, device: torch.device, settings: dict[str, Any],
                  metric_columns: Sequence[str], **extra: Any) -> LoopSettings:
    """The training loop's settings from a training step's shared options (epochs, batch size,
    seed, checkpoints, metrics, workers, precision); ``extra`` sets the rest (e.g. ``loss_column``).

    ``settings`` gains the precision's entries (`precision_settings`: none at the defaults) in
    place, so the model file that records this dict records them too."""
    from wsss_steps.training.loop import LoopSettings, precision_settings

    if args.num_workers < 0:
        raise SystemExit(f"{name}: --num-workers must be ≥ 0, not {args.num_workers}")
    settings.update(precision_settings(args.precision, args.channels_last))
    return LoopSettings(name=name, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=device,
                        settings=settings, checkpoint_dir=args.checkpoint_dir,
                        checkpoint_every=args.checkpoint_every, stop_after_epochs=args.stop_after_epochs,
                        metrics_path=args.metrics, metric_columns=metric_columns, num_workers=args.num_workers,
                        precision=args.precision, channels_last=args.channels_last, **extra)


def setup_logging(level: int = logging.INFO) -> None:
    """Log records at ``level`` and above to stderr (kept as they are where handlers exist already,
    as in a test's log capture)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def start_run(args: argparse.Namespace) -> torch.device:
    """Logging, torch threads and the device of a step that was given the run arguments: a CUDA
    device torch cannot use fails here, at the start (resolve_device), and plain `cuda` on a
    machine with several GPUs is one GPU that no other step holds (device_for_this_process)."""
    import torch

    from wsss_steps.networks.inputs import device_for_this_process, resolve_device

    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    return device_for_this_process(resolve_device(args.device))
