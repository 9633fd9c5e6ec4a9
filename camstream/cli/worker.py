"""``camstream worker``: one worker on another machine, pulling from a serving machine's
--worker-endpoint (CURVE tcp)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from camstream.cli.args import add_frame_limits, add_log_level, add_processor, add_tcp_arguments
from camstream.cli.checks import checked_processor, tcp_settings
from camstream.cli.pool import OPTION_HELP, PROCESSOR_HELP
from camstream.config import Config


def add_parser(verbs: Any) -> None:
    worker = verbs.add_parser("worker", help="run a worker on another machine",
                              description="Pull frames from 'camstream serve --worker-endpoint' "
                              "on another machine (CURVE tcp) and publish results and stats "
                              "on its bus, as its local workers do. Ctrl-C drains and stops.")
    add_tcp_arguments(worker, "worker")
    add_processor(worker, PROCESSOR_HELP, OPTION_HELP)
    add_frame_limits(worker)
    add_log_level(worker)
    worker.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camstream.supervisor.children import worker_env
    from workers.worker import run_standalone

    config = Config(workers=1, log_level=args.log_level, processor=args.processor,
                    processor_options=checked_processor(args), max_pixels=args.max_pixels,
                    frame_timeout=args.frame_timeout, **tcp_settings(args, "connect"))
    os.environ.update(worker_env(config))  # OpenCV's pixel limit is read at the first decode
    return run_standalone(config)
