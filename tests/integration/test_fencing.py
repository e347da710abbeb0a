"""Exactly once, for real (issue 11): the seven ways two jobs could work on one log
— a dropped database session, a lease running out in a long backlog, Exchange acting
after the client gave up, a stale update landing late, a create re-sent by libcurl,
an item whose id changed, a resync undone by a running pass — each end with exactly
one item per log, holding the log's newest content (docs/architecture.md, "Claiming")."""
import signal
import time

import pytest

from conftest import run_ctl
from pgcluster import wait_for

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
BACKENDS = ["ews", "graph"]
MAILBOX = "alice@example.org"
FAST = ("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_attempts = 100\n"
        "settle_ms = 300\n")


@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


def items_of(sim, log_id, kind="appointment", mailbox=MAILBOX):
    tag = f"contactlog:{log_id}:{kind}"
    return [i for i in sim.mailbox(mailbox)
            if i["extended_properties"].get(PROPERTY_KEY, "") == tag]


def requests_of(sim, *ops):
    names = sim.ops(*ops)
    return [r for r in sim.requests() if r["op"] in names]


def terminate_daemon_sessions(pg_db):
    """What an operator's pg_terminate_backend (or a fail-over) does to the daemon."""
    return pg_db.value("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE application_name = 'followupd'")


def test_session_terminated_mid_create_makes_one_item(db, sim, daemon_factory, alice):
    """1. Exchange performs the create 3 s late; meanwhile the daemon's session is
    terminated. The claim belongs to the daemon, not to the session: it is not taken
    again, and the late answer is recorded under the same token."""
    daemon_factory(FAST)
    sim.fault(mode="delay", when="before_perform", ms=3000, count=1,
              ops=sim.ops("CreateItem"))
    log_id = db.log(alice, reason="Late create")
    wait_for(lambda: requests_of(sim, "CreateItem"), what="the create to reach Exchange")
    assert terminate_daemon_sessions(db) >= 1
    wait_for(lambda: items_of(sim, log_id), timeout=10, what="the late create to land")
    db.wait_synced(log_id, timeout=15)
    assert len(items_of(sim, log_id)) == 1
    assert len(requests_of(sim, "CreateItem")) == 1, "a second create was sent"


def test_long_backlog_never_lapses_a_lease(db, sim, daemon_factory):
    """2. 160 logs in the daemon at once against a slow Exchange (150 ms per operation,
    8 requests at a time: several leases' worth of work) with 1-second leases: the
    heartbeat keeps every claim, no log is claimed twice, each gets exactly one create."""
    people = [db.employee(f"p{n}", f"Person {n}", f"p{n}@example.org") for n in range(160)]
    sim.fault(mode="delay", ms=150, count=-1, ops=sim.ops("CreateItem", "FindItem"))
    d = daemon_factory(FAST + "lease_seconds = 1\n")
    ids = [db.log(p, reason=f"backlog {n}") for n, p in enumerate(people)]
    db.wait_synced(*ids, timeout=90)
    sim.call("DELETE", "/_sim/faults")
    creates = requests_of(sim, "CreateItem")
    assert len(creates) == 160, f"{len(creates)} creates for 160 logs"
    for n, log_id in enumerate(ids):
        assert len(items_of(sim, log_id, mailbox=f"p{n}@example.org")) == 1
    assert "claimed again" not in d.output()
    assert db.value("SELECT count(*) FROM contactlog.followupd_log_state WHERE dirty") == 0


def test_create_performed_after_the_client_timeout_is_found_not_repeated(db, sim,
                                                                         daemon_factory,
                                                                         alice):
    """3. Exchange performs the create 7 s after it arrived, after our 5-second timeout.
    The retry waits the settle time (8 s) before it looks the item up, finds it, and
    adopts it."""
    daemon_factory("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n"
                   "settle_ms = 8000\n")
    sim.fault(mode="delay", when="before_perform", ms=7000, answer="drop", count=1,
              ops=sim.ops("CreateItem"))
    log_id = db.log(alice, reason="Performed late")
    db.wait_synced(log_id, timeout=30)
    assert len(items_of(sim, log_id)) == 1
    creates = requests_of(sim, "CreateItem")
    assert len(creates) == 1, f"created again before the late create landed: {creates}"
    lookups = requests_of(sim, "FindItem")
    assert lookups and min(r["time"] for r in lookups) >= creates[0]["time"] + 7, \
        "looked up before the late create could have landed"


def test_no_request_starts_after_stopping(db, sim, daemon_factory, alice):
    """3b. SIGTERM while creates are slow and more logs wait, some of them already
    handed to the back end (one request at a time): what is in flight is answered and
    recorded, nothing new is sent; the next daemon delivers the rest once."""
    d = daemon_factory(FAST + "concurrency = 1\nbatch_size = 6\n")
    sim.fault(mode="delay", ms=1500, count=-1, ops=sim.ops("CreateItem", "FindItem"))
    first = db.log(alice, reason="in flight")
    wait_for(lambda: requests_of(sim, "CreateItem"), what="the first create")
    later = [db.log(alice, reason=f"queued {n}") for n in range(5)]
    # Each later log is in the daemon (claimed) or already done (a back end that
    # sends them beside the first): none may wait in the database any more.
    wait_for(lambda: db.value("SELECT count(*) FROM contactlog.followupd_log_state "
                              "WHERE contact_log_id = ANY(%s) "
                              "AND (claimed_until IS NOT NULL OR NOT dirty)", later) == 5,
             timeout=20, what="the later logs to be claimed")
    stop_at = time.time()
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(timeout=30)
    assert d.proc.returncode == 0
    sent = requests_of(sim, "CreateItem", "FindItem", "UpdateItem")
    # (0.5 s: a request sent just before the signal may be logged a little after it;
    # without the fix the next one leaves only when the 1.5 s answer is in.)
    # A Graph $batch's members are logged one by one as the simulator works through
    # them: the batch arrived when its first member was logged.
    arrived = {}
    for r in sent:
        key = ("batch", r["batch"]) if r.get("batch") is not None else ("seq", r["seq"])
        arrived[key] = min(arrived.get(key, r["time"]), r["time"])
    late = [r for r in sent
            if arrived[("batch", r["batch"]) if r.get("batch") is not None
                       else ("seq", r["seq"])] > stop_at + 0.5]
    assert late == [], f"requests started after STOPPING=1: {late}"
    assert "STOPPING=1" in "".join(d.notify.poll())
    sim.call("DELETE", "/_sim/faults")
    d.log.close()
    d.start()
    db.wait_synced(first, *later, timeout=30)
    for log_id in [first] + later:
        assert len(items_of(sim, log_id)) == 1, log_id


def test_stale_update_never_lands_over_a_newer_one(db, sim, daemon_factory, alice):
    """4. Edit B is on its way (Exchange performs it 3 s late), edit C is committed, the
    daemon's session is terminated. Outlook must end with C, never with B."""
    daemon_factory(FAST)
    log_id = db.log(alice, reason="A")
    db.wait_synced(log_id)
    sim.fault(mode="delay", when="before_perform", ms=3000, count=1,
              ops=sim.ops("UpdateItem"))
    db.query("UPDATE contactlog.contact_log SET reason = 'B' WHERE id = %s", log_id)
    wait_for(lambda: requests_of(sim, "UpdateItem"), what="update B to reach Exchange")
    db.query("UPDATE contactlog.contact_log SET reason = 'C' WHERE id = %s", log_id)
    assert terminate_daemon_sessions(db) >= 1
    wait_for(lambda: len(requests_of(sim, "UpdateItem")) >= 2 and
             all(r["http_status"] for r in requests_of(sim, "UpdateItem")),
             timeout=20, what="both updates to be answered")
    db.wait_synced(log_id, timeout=15)
    [item] = items_of(sim, log_id)
    assert item["subject"] == "C", "Outlook shows an older version than the log"


def test_graph_creates_never_travel_on_a_reused_connection(db, graph_sim, daemon_factory,
                                                           alice, backend):
    """5. A server (or an HTTP/2 hop) that ignores "Connection: close": creates still
    each take a connection of their own, set in libcurl, not by a header."""
    if backend != "graph":
        pytest.skip("Graph only (EWS has its own test of fresh connections)")
    graph_sim.call("POST", "/_sim/settings", {"ignore_connection_close": True})
    daemon_factory(FAST)
    ids = []
    for n in range(4):
        ids.append(db.log(alice, reason=f"one by one {n}"))
        db.wait_synced(ids[-1])
    creates = requests_of(graph_sim, "CreateItem")
    assert len(creates) == 4
    reused = [r for r in creates if r["connection_seq"] != 0]
    assert reused == [], f"creates sent on a reused connection: {reused}"


def test_graph_repeated_create_is_dropped_by_its_transaction_id(db, graph_sim,
                                                                daemon_factory, alice,
                                                                backend):
    """5b. The create's answer is lost and Graph's search lags behind: the lookup misses
    the event, the create goes again — with the same transactionId, so Graph returns
    the event it made instead of a second one."""
    if backend != "graph":
        pytest.skip("Graph only")
    graph_sim.call("POST", "/_sim/settings", {"lookup_lag_ms": 5000})
    daemon_factory(FAST)
    graph_sim.fault(mode="drop_after_perform", count=1, ops=["CreateEvent"])
    log_id = db.log(alice, reason="Lost answer")
    db.wait_synced(log_id, timeout=20)
    creates = requests_of(graph_sim, "CreateItem")
    assert len(creates) == 2, "the lookup should have missed, and the create gone again"
    assert any(r.get("deduplicated") for r in creates)
    assert len(items_of(graph_sim, log_id)) == 1


def test_moved_item_is_looked_up_not_created_again(db, sim, daemon_factory, alice):
    """6. The item moved (a new ItemId), the log changes: the update is answered "not
    found", the item is looked up by its tag, adopted and updated."""
    daemon_factory(FAST)
    log_id = db.log(alice, reason="Before the move")
    db.wait_synced(log_id)
    [item] = items_of(sim, log_id)
    moved = sim.call("POST", f"/_sim/items/{item['id']}/move")["id"]
    db.query("UPDATE contactlog.contact_log SET reason = 'After the move' WHERE id = %s",
             log_id)
    db.wait_synced(log_id)
    [item] = items_of(sim, log_id)
    assert item["id"] == moved
    assert item["subject"] == "After the move"
    assert len(requests_of(sim, "CreateItem")) == 1
    assert db.value("SELECT item_id FROM contactlog.outlook_item WHERE contact_log_id = %s",
                    log_id) == moved


def test_resync_during_a_pass_is_not_lost(db, pg, sim, daemon_factory, alice):
    """7. A pass is updating the item (Exchange has done it, its answer takes 2 s); the
    user edits the item in Outlook, then the operator runs resync. The pass finishes,
    and the resync still makes Outlook match the log."""
    d = daemon_factory(FAST)
    log_id = db.log(alice, reason="A")
    db.wait_synced(log_id)
    sim.fault(mode="delay", ms=2000, count=1, ops=sim.ops("UpdateItem"))
    db.query("UPDATE contactlog.contact_log SET reason = 'B' WHERE id = %s", log_id)
    wait_for(lambda: items_of(sim, log_id)[0]["subject"] == "B", what="update B performed")
    [item] = items_of(sim, log_id)
    sim.call("PATCH", f"/_sim/items/{item['id']}", {"subject": "Changed in Outlook"})
    result = run_ctl(d.config_path, "resync", str(log_id))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: all(r["http_status"] for r in requests_of(sim, "UpdateItem")),
             what="update B answered")
    wait_for(lambda: items_of(sim, log_id)[0]["subject"] == "B", timeout=10,
             what="the resync to put Outlook back")
    db.wait_synced(log_id)
    assert len(items_of(sim, log_id)) == 1
