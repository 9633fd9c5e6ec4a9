"""Ingest: the gevent process every phone talks to (``camstream.ingest``, run by the supervisor).

``app`` is the process (WSGI router, the socket.io server, the tasks); ``dispatch`` and
``routing`` hand frames to the workers; ``ledger`` keeps the per-client counters; ``limits``
and ``httpguard`` bound what one client can cost; ``eio4`` is the current protocol revision
(python-socketio), ``eio3`` the Android app's (Engine.IO 3); ``wsfast`` is the websocket frame
path both share.
"""
