"""Free loopback ports for the servers the tests and benchmarks start."""
from __future__ import annotations

import os
import random
import socket
from pathlib import Path

_PORTS = random.Random(os.getpid())


def free_port(span: int = 1) -> int:
    """A port P such that P .. P+span-1 are free on 127.0.0.1 (``--worker-endpoint`` takes P
    and the bus the next two). Drawn below the kernel's ephemeral range: a port the kernel
    hands out (bind to 0) is also a source port for any outgoing connection, which can take it
    between this check and the daemon's bind ("Address already in use", seen in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = _PORTS.randrange(10000, low - span)
        socks = []
        try:
            for p in range(port, port + span):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {span} free consecutive ports below {low}")
