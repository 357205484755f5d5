"""The ``celery-batching`` command (also ``python -m celery_batching``).

A subcommand is a :class:`Subcommand`: a name, a tuple of :class:`Option`
and a function of the parsed arguments returning the exit status. Options
are plain data so a Django management command can add the same ones to its
own parser (``add_options(parser, WORKERS_OPTIONS)`` in ``add_arguments``).
Arguments after ``--`` are passed through to the underlying program, as
``args.extra`` (a Django command sets ``args.extra`` itself before calling
the same ``run`` function).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery.app.utils import find_app

from ..errors import ConfigurationError
from ..worker.exporter import DepthExporter
from .devices import WorkerSpec, plan_workers
from .launcher import RestartPolicy, Supervisor, with_device, with_threads, worker_command, worker_env

# Log line format of the launcher itself (the workers use their own).
LOG_FORMAT = "[%(asctime)s: %(levelname)s/celery-batching] %(message)s"
# Log levels both Python logging and `celery worker --loglevel` accept.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Option:
    """One command-line option, as the arguments of ``ArgumentParser.add_argument``."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add an options table to an argparse parser (ours or a Django command's)."""
    for option in options:
        parser.add_argument(*option.flags, **option.kwargs)


@dataclass(frozen=True)
class Subcommand:
    """A ``celery-batching`` subcommand: its options and what it runs."""

    name: str
    help: str
    options: tuple[Option, ...]
    run: Callable[[argparse.Namespace], int]
    passthrough: bool = False  # accepts extra arguments after "--" (as args.extra)


def _index_list(value: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; the plan rejects duplicates and negatives."""
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU indices like 0,1,2, got {value!r}") from None


def _name_list(value: str) -> list[str]:
    names = [part.strip() for part in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated queue names like q1,q2, got {value!r}")
    return names


def _loglevel(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.upper()


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {value!r}")
    return number


WORKERS_OPTIONS: tuple[Option, ...] = (
    Option(("-A", "--app"), {"required": True, "help": "Celery app, as for 'celery -A' (e.g. django_demo)"}),
    Option(
        ("--config",),
        {"help": "Celery config module for every worker, e.g. worker_configs.common (not a gpuN one)"},
    ),
    Option(("--gpus",), {"type": _index_list, "help": "GPU indices to serve, e.g. 0,1,2,3"}),
    Option(("--per-gpu",), {"type": _count, "default": 1, "help": "workers per GPU (default 1)"}),
    Option(("--cpu",), {"type": _count, "metavar": "N", "help": "run N CPU workers instead of GPU workers"}),
    Option(("--queues", "-Q"), {"type": _name_list, "default": [], "help": "queues to consume, e.g. q1,q2"}),
    Option(
        ("--loglevel", "-l"),
        {"type": _loglevel, "default": "INFO", "help": "log level of the launcher and the workers"},
    ),
    Option(("--threads",), {"type": _count, "help": "CPU threads per worker (default: cores / workers)"}),
    Option(
        ("--device",),
        {"help": "force this device in every worker while keeping GPU pinning (e.g. cpu to rehearse a GPU plan)"},
    ),
    Option(
        ("--shutdown-timeout",),
        {"type": _seconds, "default": 60.0, "help": "seconds to wait for a warm shutdown before SIGKILL"},
    ),
    Option(
        ("--max-restarts",),
        {"type": _count, "default": 5, "help": "restarts per worker per minute before restarts are held back"},
    ),
    Option(("--dry-run",), {"action": "store_true", "help": "print the plan and the commands, start nothing"}),
)


def run_workers(args: argparse.Namespace) -> int:
    """Plan the workers, then start and supervise them (or print them with --dry-run)."""
    if (args.gpus is None) == (args.cpu is None):
        raise ConfigurationError("give either --gpus (e.g. --gpus 0,1) or --cpu N")
    specs = plan_workers(args.gpus, args.per_gpu, args.cpu)
    if args.threads is not None:
        specs = with_threads(specs, args.threads)
    if args.device is not None:
        specs = with_device(specs, args.device)

    def command(spec: WorkerSpec) -> list[str]:
        return worker_command(spec, args.app, args.loglevel, args.queues, args.extra, args.config)

    if args.dry_run:
        for spec in specs:
            env = worker_env(spec, {})
            print(" ".join(f"{k}={v!r}" for k, v in sorted(env.items())), " ".join(command(spec)))
        return 0
    policy = RestartPolicy(max_restarts=args.max_restarts)
    return Supervisor(specs, command, policy=policy, shutdown_timeout=args.shutdown_timeout).run()


# The exporter's default port (beside the Prometheus exporters' 91xx-98xx range; not a worker's).
EXPORTER_PORT = 9808

EXPORTER_OPTIONS: tuple[Option, ...] = (
    Option(("-A", "--app"), {"required": True, "help": "Celery app, as for 'celery -A' (e.g. django_demo)"}),
    Option(
        ("--queues", "-Q"),
        {"type": _name_list, "default": [], "help": "queues to export (default: every batched queue of the app)"},
    ),
    Option(
        ("--port",), {"type": _port, "default": EXPORTER_PORT, "help": f"port to serve on (default {EXPORTER_PORT})"}
    ),
    Option(("--addr",), {"default": "0.0.0.0", "help": "address to serve on (default: every interface)"}),
    Option(("--loglevel", "-l"), {"type": _loglevel, "default": "INFO", "help": "log level"}),
)


def run_exporter(args: argparse.Namespace) -> int:
    """Serve the queues' depth until SIGTERM or Ctrl-C, with no worker and no model."""
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # before the server thread starts: it inherits the mask
    exporter = DepthExporter(find_app(args.app), args.queues)
    exporter.start(args.addr, args.port)
    received = signal.sigwait(stop_signals)
    logging.getLogger(__name__).info("%s: stopping the exporter", signal.Signals(received).name)
    exporter.stop()
    return 0


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "workers",
        "start and supervise one celery worker per GPU slot (or N CPU workers)",
        WORKERS_OPTIONS,
        run_workers,
        passthrough=True,
    ),
    Subcommand(
        "exporter",
        "serve the true depth of the app's batched queues for an autoscaler (no worker, no model)",
        EXPORTER_OPTIONS,
        run_exporter,
    ),
)


def build_parser(subcommands: Sequence[Subcommand] = SUBCOMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celery-batching", description="Batched inference with Celery workers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in subcommands:
        epilog = "Arguments after -- are passed to the underlying command." if command.passthrough else None
        add_options(sub.add_parser(command.name, help=command.help, epilog=epilog), command.options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, run the subcommand, return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    command = next(c for c in SUBCOMMANDS if c.name == args.command)
    if extra and not command.passthrough:
        parser.error(f"{command.name} takes no arguments after --")
    args.extra = extra
    logging.basicConfig(level=getattr(args, "loglevel", "INFO"), format=LOG_FORMAT)
    try:
        return command.run(args)
    except ConfigurationError as error:
        parser.exit(2, f"celery-batching {command.name}: error: {error}\n")
