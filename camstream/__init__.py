"""camstream: a frame-ingest daemon (socket.io in, ZeroMQ across, OpenCV workers out)."""

__version__ = "0.1.0"
