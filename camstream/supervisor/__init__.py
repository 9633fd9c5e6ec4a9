"""The ``camstream serve`` process: spawns ingest, workers and displays, reaps and restarts
them, stops them, and speaks to systemd. Plain Python, no gevent.

``arbiter`` is the loop, its verbs and its signals; ``children`` a spec per role and the
restart policy; ``hub`` the bus it hosts or joins; ``pool`` the multi-node shapes; ``notify``
systemd's notify protocol; ``systemd`` the unit recipe and ``reload``.
"""
