"""Everything that attaches to a running daemon's bus: ``display`` (windows and snapshots),
``webview`` (the browser view), ``tap`` (results as JSON lines) and ``subscribe`` (the
``camstream.frames()`` API, the one reader of the bus's frame messages)."""
