"""Ingest's ledger without a server: worker reports reconciled into per-client counters, lost
frames, forgotten names and the /healthz and Prometheus views, on a real Ledger. Times the
ledger reads itself (time.monotonic, time.time) are moved by shifting its recorded stamps."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from camstream.ingest.ledger import (
    LOST_AFTER, UNAUTHENTICATED, WORKER_STALE_S, ClientCounts, Ledger, LedgerCollector,
)
from camstream.ingest.limits import ConnectionCount


def report(pid: int, clients: dict, **extra) -> dict:
    """A worker's stats message: cumulative counters per client name."""
    return {"pid": pid, "clients": clients, **extra}


def dispatched(ledger: Ledger, name: str, seqs, ago: float = 0.0) -> ClientCounts:
    """``name`` received and dispatched frames ``seqs``, ``ago`` seconds ago."""
    counts = ledger.client(name)
    for seq in seqs:
        counts.received += 1
        counts.dispatched += 1
        counts.outstanding[seq] = time.monotonic() - ago
    return counts


def test_cumulative_reports_count_each_frame_once_and_a_duplicate_changes_nothing():
    """Reports carry running totals: the ledger adds the difference, so a resent report adds
    nothing, and every worker key (errors_by per reason too) is kept per client."""
    ledger = Ledger()
    first = report(7, {"cam": {"processed": 3, "errors": 1, "processor_errors": 1}},
                   errors_by={"cam": {"decode": 1}})
    ledger.worker_report(first)
    ledger.worker_report(report(7, {"cam": {"processed": 5, "errors": 2, "processor_errors": 1}},
                                errors_by={"cam": {"decode": 2}}))
    ledger.worker_report(report(7, {"cam": {"processed": 5, "errors": 2, "processor_errors": 1}},
                                errors_by={"cam": {"decode": 2}}))  # the same again
    done = ledger.processed()["cam"]
    assert (done["processed"], done["errors"], done["processor_errors"]) == (5, 2, 1)
    assert done["errors_by"] == {"decode": 2}
    assert (done["recorded"], done["record_errors"], done["record_dropped"]) == (0, 0, 0)


def test_a_partial_report_is_merged_into_what_the_worker_said_before():
    """``full: false`` carries only the names that changed: the others keep their counts."""
    ledger = Ledger()
    ledger.worker_report(report(1, {"a": {"processed": 4}, "b": {"processed": 2}}))
    ledger.worker_report(report(1, {"a": {"processed": 6}}, full=False))
    done = ledger.processed()
    assert (done["a"]["processed"], done["b"]["processed"]) == (6, 2)


def test_a_restarted_worker_starts_from_zero_and_the_dead_ones_work_still_counts():
    """A new pid's counters are added to the dead pid's last ones, never subtracted."""
    ledger = Ledger()
    ledger.worker_report(report(1, {"cam": {"processed": 10, "errors": 1}}))
    ledger.worker_report(report(2, {"cam": {"processed": 3}}))  # pid 1 died, pid 2 replaces it
    ledger.worker_report(report(2, {"cam": {"processed": 4}}))
    done = ledger.processed()["cam"]
    assert (done["processed"], done["errors"]) == (14, 1)


def test_workers_on_other_hosts_with_the_same_pid_are_different_workers():
    """Workers are keyed by (host, pid): a remote pid 5 does not overwrite the local pid 5."""
    ledger = Ledger()
    ledger.worker_report(report(5, {"cam": {"processed": 3}}))
    ledger.worker_report(report(5, {"cam": {"processed": 2}}, host="far", remote=True))
    assert ledger.processed()["cam"]["processed"] == 5
    assert ledger.remote_workers() == [
        {"host": "far", "pid": 5, "alive": True, "processed": 2}]


def test_a_restarted_ingest_counts_an_older_worker_only_from_its_first_report():
    """After an ingest restart, a worker older than it has its first counters as a baseline
    (errors_by too); a name first heard after its first full report started at zero."""
    ledger = Ledger(restarted=True)
    old = ledger.started - 100
    ledger.worker_report(report(1, {"a": {"processed": 50, "errors": 4}}, started=old,
                                full=False, errors_by={"a": {"decode": 4}}))
    ledger.worker_report(report(1, {"a": {"processed": 52, "errors": 5}, "b": {"processed": 9}},
                                started=old, errors_by={"a": {"decode": 5}}))  # full
    ledger.worker_report(report(1, {"c": {"processed": 3}}, started=old, full=False))
    done = ledger.processed()
    assert (done["a"]["processed"], done["a"]["errors"]) == (2, 1)
    assert done["a"]["errors_by"] == {"decode": 1}
    assert done["b"]["processed"] == 0  # first heard in the full report: its baseline
    assert done["c"]["processed"] == 3  # new to the worker after that: all of it counts


def test_a_restarted_ingest_counts_everything_of_a_worker_younger_than_itself():
    ledger = Ledger(restarted=True)
    ledger.worker_report(report(1, {"a": {"processed": 7}}, started=ledger.started + 1))
    assert ledger.processed()["a"]["processed"] == 7


def test_frames_never_reported_become_lost_and_a_late_report_makes_them_processed():
    """checkpoint() counts frames dispatched over LOST_AFTER ago as lost; a worker's ``done``
    list removes them from in-flight or from lost (once, even if reported twice)."""
    ledger = Ledger()
    counts = dispatched(ledger, "cam", [1, 2], ago=LOST_AFTER + 5)
    dispatched(ledger, "cam", [3])  # just now: still in flight
    ledger.checkpoint()
    assert (counts.lost, list(counts.outstanding)) == (2, [3])
    late = report(1, {"cam": {"processed": 2}}, done={"cam": [1, 3], "gone": [9]})
    ledger.worker_report(late)
    ledger.worker_report(late)  # a duplicate does not bring a frame back twice
    assert (counts.lost, counts.outstanding) == (1, {})
    row = ledger.health()["clients"]["cam"]
    assert (row["dispatched"], row["processed"], row["in_flight"], row["lost"]) == (3, 2, 0, 1)
    assert "gone" not in ledger.clients  # ``done`` for an unknown name creates no row


def test_health_rows_and_totals_add_up_over_clients():
    """Each row joins ingest's counts with the workers'; the optional keys appear only when
    set; totals are the sums over rows."""
    ledger = Ledger()
    a = dispatched(ledger, "a", [1, 2, 3])
    a.dropped = 1
    a.refuse("too large")
    ledger.joined("a")
    ledger.joined("a")
    dispatched(ledger, "b", [1])
    ledger.owners["b"] = 3
    ledger.worker_report(report(1, {"a": {"processed": 2, "errors": 1, "recorded": 2},
                                    "b": {"processed": 1}}, done={"a": [1, 2, 3], "b": [1]},
                                errors_by={"a": {"decode": 1}}))
    health = ledger.health()
    assert health["clients"]["a"] == {
        "received": 3, "dispatched": 3, "dropped": 1, "processed": 2, "errors": 1,
        "refused": 1, "in_flight": 0, "lost": 0, "refused_by": {"too large": 1},
        "connected": 2, "recorded": 2, "errors_by": {"decode": 1}}
    b = health["clients"]["b"]
    assert b["worker"] == 3 and "recorded" not in b and "errors_by" not in b
    assert "worker" not in health["clients"]["a"]
    assert health["totals"] == {"received": 4, "dispatched": 4, "dropped": 1, "processed": 3,
                                "errors": 1, "refused": 1, "in_flight": 0, "lost": 0}


def test_health_has_its_documented_shape_and_is_ok_with_nothing_wrong():
    ledger = Ledger()
    ledger.limit_hits["z_limit"] += 2
    ledger.limit_hits["a_limit"] += 1
    conns = ConnectionCount(1)
    ledger.connection_limits.append(conns)
    conns.acquire("10.0.0.1")
    conns.acquire("10.0.0.1")  # refused
    health = ledger.health()
    assert set(health) == {"status", "reasons", "uptime_s", "workers", "ingest", "clients",
                           "totals", "departed", "refused_connections", "limits"}
    assert (health["status"], health["reasons"]) == ("ok", [])
    assert health["workers"] == {"alive": 0, "expected": None, "restarts": 0}
    assert health["ingest"]["restarts"] == 0 and 0 <= health["ingest"]["uptime_s"] < 60
    assert health["refused_connections"] == 1
    assert list(health["limits"].items()) == [("a_limit", 1), ("z_limit", 2)]


def test_an_unauthenticated_row_appears_only_once_it_received_frames():
    ledger = Ledger()
    ledger.client(UNAUTHENTICATED).refuse("unauthenticated")
    assert UNAUTHENTICATED not in ledger.health()["clients"]
    ledger.client(UNAUTHENTICATED).received += 1
    assert ledger.health()["clients"][UNAUTHENTICATED]["refused"] == 1


def test_without_names_the_rows_are_hidden_but_counted_and_the_totals_stay():
    ledger = Ledger()
    dispatched(ledger, "a", [1])
    dispatched(ledger, "b", [1, 2])
    full, anonymous = ledger.health(), ledger.health(with_names=False)
    assert anonymous["clients"] == {} and anonymous["clients_hidden"] == 2
    assert "clients_hidden" not in full
    assert anonymous["totals"] == full["totals"] and full["totals"]["in_flight"] == 3


def test_fewer_workers_alive_than_expected_is_degraded_until_they_report():
    """Workers are alive while heard from within WORKER_STALE_S; fewer than the expected
    number is degraded, said in ``reasons``."""
    ledger = Ledger()
    ledger.workers_configured = 2
    ledger.worker_report(report(1, {}))
    health = ledger.health()
    assert (health["status"], health["reasons"]) == ("degraded", ["1 of 2 workers alive"])
    assert health["workers"]["alive"] == 1 and health["workers"]["expected"] == 2
    ledger.worker_report(report(2, {}))
    assert ledger.health()["status"] == "ok"
    ledger._worker_seen[("", 2)] -= WORKER_STALE_S + 1  # pid 2 silent since
    assert ledger.workers_alive() == 1
    assert ledger.health()["reasons"] == ["1 of 2 workers alive"]


def test_the_supervisors_report_decides_the_workers_alive_expected_and_restarts():
    ledger = Ledger()
    ledger.supervisor = {"workers_alive": 3, "workers_expected": 4, "worker_restarts": 2,
                         "ingest_restarts": 1, "started": time.time() - 500}
    health = ledger.health()
    assert health["workers"] == {"alive": 3, "expected": 4, "restarts": 2}
    assert health["reasons"] == ["3 of 4 workers alive"]
    assert health["ingest"]["restarts"] == 1
    assert 499 <= health["uptime_s"] < 560 and health["ingest"]["uptime_s"] < 60


def test_a_recently_restarted_ingest_is_degraded_for_a_minute():
    ledger = Ledger(restarted=True)
    health = ledger.health()
    assert health["status"] == "degraded"
    assert health["reasons"][0].startswith("ingest restarted ")
    ledger.started -= 61  # a minute later
    assert ledger.health()["status"] == "ok"


def test_other_problems_are_reasons_too():
    ledger = Ledger()
    ledger.problems["ipc"] = "the bus is full"
    assert ledger.health()["reasons"] == ["the bus is full"]
    assert ledger.last_reasons == {"ipc": "the bus is full"}


def test_a_silent_worker_pool_is_degraded_and_its_last_report_no_longer_trusted():
    """--ingest-only: the pool's report stands for the workers while it is recent."""
    ledger = Ledger()
    ledger.pool_endpoint = "tcp://pool:5555"
    ledger.pool_report({"workers_alive": 2, "workers_expected": 2})
    health = ledger.health()
    assert health["status"] == "ok" and health["workers"]["alive"] == 2
    assert health["workers"]["pool"] == "tcp://pool:5555"
    ledger.pool_seen -= 10
    assert ledger.pool_missing_s() >= 10
    health = ledger.health()
    assert health["status"] == "degraded" and health["workers"]["alive"] == 0
    assert health["reasons"][0].startswith("no worker pool: nothing heard from tcp://pool:5555")
    ledger.pool_endpoint = ""
    assert ledger.pool_missing_s() is None  # not --ingest-only: there is no pool to miss


def test_names_gone_long_enough_are_folded_into_departed_with_their_workers_counts():
    """forget() folds a name idle for forget_after into ``departed`` (ingest's counts and what
    workers did for it); a name with frames still in flight waits; totals keep everything."""
    ledger = Ledger()
    dispatched(ledger, "gone", [1, 2])
    dispatched(ledger, "waiting", [1])
    ledger.worker_report(report(1, {"gone": {"processed": 1, "errors": 1}},
                                done={"gone": [1, 2]}))
    before = ledger.health()["totals"]
    for name in ("gone", "waiting"):
        ledger.joined(name)
        assert ledger.left(name) == 0
    ledger.forget(time.monotonic() + ledger.forget_after + 1)
    assert list(ledger.clients) == ["waiting"] and list(ledger.idle) == ["waiting"]
    health = ledger.health()
    assert health["departed"] == {"clients": 1, "received": 2, "dispatched": 2, "dropped": 0,
                                  "processed": 1, "errors": 1, "refused": 0, "in_flight": 0,
                                  "lost": 0}
    assert health["totals"] == before


def test_a_name_that_reconnects_is_not_forgotten():
    ledger = Ledger()
    ledger.joined("cam")
    ledger.joined("cam")
    assert ledger.left("cam") == 1 and "cam" not in ledger.idle
    ledger.left("cam")
    ledger.joined("cam")
    ledger.client("cam")
    ledger.forget(time.monotonic() + ledger.forget_after + 1)
    assert "cam" in ledger.clients and ledger.departed["clients"] == 0


def test_own_clients_only_leaves_other_nodes_names_out_of_departed():
    """--ingest-only: the pool reports every node's clients; names unknown here are not ours."""
    ledger = Ledger()
    ledger.worker_report(report(1, {"elsewhere": {"processed": 8}}))
    assert ledger.health()["departed"]["processed"] == 8
    ledger.own_clients_only = True
    assert ledger.health()["departed"]["processed"] == 0


def test_the_prometheus_view_follows_health_and_hides_names_when_told():
    ledger = Ledger()
    dispatched(ledger, "cam", [1])
    ledger.worker_report(report(1, {"cam": {"processed": 1}}, done={"cam": [1]}))
    ledger.workers_configured = 2
    named, anonymous = CollectorRegistry(), CollectorRegistry()
    named.register(LedgerCollector(ledger))
    anonymous.register(LedgerCollector(ledger, names=False))
    assert named.get_sample_value("camstream_frames_processed_total", {"client": "cam"}) == 1
    assert anonymous.get_sample_value("camstream_frames_processed_total",
                                      {"client": "cam"}) is None
    assert named.get_sample_value("camstream_workers_alive") == 1
    assert named.get_sample_value("camstream_degraded", {"reason": "workers"}) == 1
    assert named.get_sample_value("camstream_degraded", {"reason": "ingest"}) == 0


def test_a_forgotten_name_that_comes_back_starts_a_row_of_its_own():
    """The workers' counts of a name folded into ``departed`` go with it: back, its row
    balances (dispatched = processed + errors + in flight + lost), and so does departed."""
    ledger = Ledger()
    counts = ledger.client("cam")
    counts.received = counts.dispatched = 5
    ledger.worker_report({"pid": 1, "clients": {"cam": {"processed": 5}}})
    ledger.joined("cam")
    ledger.left("cam")
    ledger.forget(time.monotonic() + ledger.forget_after + 1)
    ledger.joined("cam")
    counts = ledger.client("cam")
    counts.received = counts.dispatched = 1
    ledger.worker_report({"pid": 1, "clients": {"cam": {"processed": 6}}})
    health = ledger.health()
    row, departed = health["clients"]["cam"], health["departed"]
    assert (row["received"], row["dispatched"], row["processed"]) == (1, 1, 1)
    assert (departed["received"], departed["dispatched"], departed["processed"]) == (5, 5, 5)
    assert health["totals"]["processed"] == 6
