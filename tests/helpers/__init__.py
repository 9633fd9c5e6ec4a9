"""What the tests and the benchmarks share: ports, frames, bounded waits and the processes they
start (each stopped by its pid). Client wrappers and fixtures that need pytest live in the
modules beside this one (jsclient, rawclient, streaming, browser, xvfb, localusers)."""
from tests.helpers.images import make_jpeg
from tests.helpers.ports import free_port
from tests.helpers.procs import ROOT, Daemon, make_users, proc_title, terminate
from tests.helpers.waiting import wait_for

__all__ = ["ROOT", "Daemon", "free_port", "make_jpeg", "make_users", "proc_title", "terminate",
           "wait_for"]
