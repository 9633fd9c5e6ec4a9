"""``camstream pool``: workers and the bus for ``serve --ingest-only`` nodes (scaling out)."""
from __future__ import annotations

import argparse
from typing import Any

from camstream.cli.args import (add_frame_limits, add_log_level, add_processor,
                                add_runtime_dir, add_stop_timeout, add_tcp_arguments,
                                add_workers, add_worker_timeout, runtime_dir_of)
from camstream.cli.checks import checked_processor, tcp_settings
from camstream.config import Config

PROCESSOR_HELP = "what workers do with each frame (as serve's; default: %(default)s)"
OPTION_HELP = "an option for the processor; repeat for more"


def add_parser(verbs: Any) -> None:
    pool = verbs.add_parser("pool", help="run a worker pool that several ingest nodes feed",
                            description="Run workers and the bus for 'serve --ingest-only' "
                            "nodes on this or other machines: they connect to "
                            "--worker-endpoint (CURVE tcp). See README 'Scaling out'.")
    add_tcp_arguments(pool, "pool")
    add_workers(pool)
    add_processor(pool, PROCESSOR_HELP, OPTION_HELP)
    add_frame_limits(pool)
    add_runtime_dir(pool)
    add_log_level(pool)
    add_worker_timeout(pool, "a worker silent this long is replaced (default: %(default)s)")
    add_stop_timeout(pool, "bound on a graceful stop (default: %(default)s)")
    pool.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camstream.supervisor import runtime
    from camstream.supervisor.pool import pool

    config = Config(workers=args.workers, runtime_dir=runtime_dir_of(args),
                    log_level=args.log_level, processor=args.processor,
                    processor_options=checked_processor(args),
                    worker_timeout=args.worker_timeout, stop_timeout=args.stop_timeout,
                    max_pixels=args.max_pixels, frame_timeout=args.frame_timeout,
                    **tcp_settings(args, "bind"))
    runtime.claim_runtime_dir(config.runtime_dir)
    runtime.become("pool", config.log_level)
    return pool(config, runtime.notifier()).run()
