"""``/camera`` on ingest's port: a page that streams a phone's (or any browser's) camera.

Static files read once when ingest starts and answered from memory: serving the page costs
ingest nothing per frame. The page's own script (``static/camera.js``) speaks Engine.IO 4 /
Socket.IO 5 over a websocket to the same port, where the frames arrive as any client's do.
"""
from __future__ import annotations

from importlib import resources

PAGES = {  # path -> (file in camstream/static, content type)
    "/camera": ("camera.html", "text/html; charset=utf-8"),
    "/camera/": ("camera.html", "text/html; charset=utf-8"),
    "/camera/camera.js": ("camera.js", "text/javascript; charset=utf-8"),
    "/camera/view.css": ("view.css", "text/css; charset=utf-8"),
}
_FILES = {name: resources.files("camstream").joinpath("static", name).read_bytes()
          for name in {name for name, _ in PAGES.values()}}
HEADERS = [("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
           ("X-Frame-Options", "DENY")]


def page(path: str) -> tuple[bytes, str] | None:
    """(body, content type) of a camera page path, or None when it is not one."""
    entry = PAGES.get(path)
    if entry is None:
        return None
    return _FILES[entry[0]], entry[1]
