"""A load-generating client process, driven by the harness over stdin/stdout.

Runs in the venv of the system it drives (``python -m benchmarks.client``).
It builds the system's adapter once, then obeys one JSON command per stdin
line and answers with one JSON line on its own protocol channel (the
original stdout; anything the libraries print goes to stderr instead).
Commands: ``warmup``, ``run`` (closed loop), ``fill``, ``collect``,
``discard``, ``exit``. Results go to the file a command names, so the
harness reads the CPU counters of an idle client after each step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from . import adapters, workloads
from .models import MODELS


def _protocol_channel() -> TextIO:
    """The real stdout for protocol lines; fd 1 then points at stderr."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def _write(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(payload, handle)


def serve(args: argparse.Namespace) -> None:
    channel = _protocol_channel()
    adapter = adapters.load(args.system, args.model, args.device, args.workers, args.redis_url)
    model = MODELS[args.model](args.device)  # for samples and checks only: never loaded here
    drain = workloads.Drain(adapter, model)
    channel.write(json.dumps({"event": "ready", "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        name = command["cmd"]
        deadline = time.time() + command.get("seconds", 3600.0)
        indices = range(command.get("offset", 0), command.get("offset", 0) + command.get("requests", 0))
        reply: dict[str, Any] = {"event": name}
        if name == "warmup":
            outcome = workloads.closed_loop(adapter, model, indices, 1, deadline, args.timeout)
            reply["failed"] = sum(1 for *_, ok in outcome.records if not ok)
            reply["first_error"] = outcome.first_error
        elif name == "run":
            outcome = workloads.closed_loop(adapter, model, indices, command["threads"], deadline, args.timeout)
            _write(command["out"], outcome.as_json())
        elif name == "fill":
            drain.fill(indices, deadline)
            reply["sent"] = len(drain.pending)
        elif name == "collect":
            _write(command["out"], drain.collect(args.timeout).as_json())
        elif name == "discard":
            reply["discarded"] = drain.discard()
        elif name == "exit":
            adapter.close()
            channel.write(json.dumps(reply) + "\n")
            return
        else:
            reply = {"event": "error", "message": f"unknown command {name!r}"}
        channel.write(json.dumps(reply) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True, choices=sorted(adapters.ADAPTERS))
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
