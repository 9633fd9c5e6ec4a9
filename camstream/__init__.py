"""camstream: a frame-ingest daemon (socket.io in, ZeroMQ across, OpenCV workers out).

``camstream.frames()`` reads a running daemon's frames from your own script (see
:mod:`camstream.attach.subscribe`); it is imported on first use, so ``import camstream`` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["frames", "Frame", "Subscription", "NoDaemon"]


def __getattr__(name: str):
    if name in __all__:
        from camstream.attach import subscribe as module
        return getattr(module, name)
    raise AttributeError(f"module 'camstream' has no attribute {name!r}")
