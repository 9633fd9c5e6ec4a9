"""The one configuration object every camstream process receives.

It is parsed and validated once, at the edge (the command line), frozen, and handed to each
child process as JSON on its standard input, so that nothing deeper reads ``sys.argv`` or the
environment.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Settings of one daemon; see ``camstream serve --help`` for what each one means."""

    ip: str = "0.0.0.0"
    port: int = 8080
    auth: bool = False
    display: bool = False
    workers: int = 2
    users_file: str = ""
    runtime_dir: str = ""
    log_level: str = "info"
    max_frame_bytes: int = 4 * MiB
    queue_depth: int = 1
    worker_hwm: int = 2
    stop_timeout: float = 10.0
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    worker_timeout: float = 10.0
    max_fps: float = 100.0
    max_connections_per_ip: int = 32
    max_pixels: int = 16_000_000    # --max-pixels: a larger frame (from its header) is an error
    frame_timeout: float = 5.0      # --frame-timeout: a worker stuck on a frame longer is replaced
    # limits on what one hostile client can make ingest hold (camstream.ingest.limits)
    max_queued_bytes: int = 1 * MiB        # one Engine.IO 3 session's packets awaiting a poll
    max_incomplete_bytes: int = 64 * MiB   # all events still awaiting binary attachments
    incomplete_timeout: float = 10.0       # seconds an event may await its attachments
    header_timeout: float = 10.0           # seconds to send a request's line and headers
    handshake_timeout: float = 10.0        # seconds to finish a TLS handshake
    max_pending_connections: int = 512     # connections not yet requests (oldest closed)
    metrics_token: str = ""                # -a: a bearer token that sees client names
    metrics_trust_loopback: bool = False   # -a: loopback callers see client names
    forget_after: float = 600.0            # seconds after a client name left: folded
    certfile: str = ""
    keyfile: str = ""
    processor: str = "stats"
    processor_options: tuple = ()   # (key, value) pairs from --processor-opt key=value
    record_dir: str = ""            # --record DIR: recordings (written by the workers)
    record_max_gb: float = 0.0      # --record-max-gb: prune the oldest days beyond this; 0: never
    emit_results: bool = False      # --emit-results: send each result to its client
    web: str = ""                   # --web HOST:PORT: a web view display process (webview)
    route: str = "any"              # "any": a shared pipeline; "client": each client to one
                                    # worker (camstream.ingest.routing), for ordered processors
    # Scaling out (camstream.bus, camstream.keys): tcp endpoints, always with CURVE keys
    worker_endpoint: str = ""       # tcp://HOST:PORT of the frame pipeline
    bus_endpoint: str = ""          # tcp://HOST:PORT of the bus (XSUB; PORT+1 is its XPUB)
    curve_keys: str = ""            # --curve-keys DIR (layout in camstream.keys)
    curve_key: str = "worker"       # the client key pair's name in it, on the connecting side
    tcp_side: str = ""              # "bind" (serve, pool), "connect" (--ingest-only, worker)
    ingest_only: bool = False       # --ingest-only: no workers here; they are a pool's

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls(**json.loads(text))


def default_users_file() -> str:
    """systemd's StateDirectory (the service user can write it), /var/lib/camstream for root,
    else the user's config directory."""
    if os.environ.get("STATE_DIRECTORY"):
        return str(Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "users")
    if os.getuid() == 0:
        return "/var/lib/camstream/users"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return str(Path(base) / "camstream" / "users")
