"""Engine.IO 3 / Socket.IO protocol 4 (the Android app's revision): not written yet."""
from __future__ import annotations


def wrap(app, ingest, config):
    """Route ``EIO=3`` requests to the legacy revision; everything else goes to ``app``."""
    return app
