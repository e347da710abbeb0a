"""followupd through crashes, database outages and throttling: nothing lost,
nothing duplicated, and the server's requested waits honoured."""
import random
import signal
import threading
import time

import psycopg2
import pytest

from conftest import Daemon, Database, INSTALL_SQL
from pgcluster import PgCluster, wait_for

FAST_RETRY = "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_attempts = 1000\nsettle_ms = 300\n"
PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"


def appointments_per_log(sim, mailbox):
    counts = {}
    for item in sim.mailbox(mailbox):
        tag = item["extended_properties"].get(PROPERTY_KEY, "")
        counts[tag] = counts.get(tag, 0) + 1
    return counts


# Requests already on their way when the server said "wait" may land just after
# its answer; anything sent later than this after it must have waited.
IN_FLIGHT_SLACK = 0.25


def assert_waits_honoured(requests, http_wait, busy_wait):
    reqs = sorted(requests, key=lambda r: r["time"])
    for r in reqs:
        if r["http_status"] == 503:
            early = [x for x in reqs if r["time"] + IN_FLIGHT_SLACK < x["time"]
                     < r["time"] + http_wait]
            assert early == [], f"requests during a Retry-After of {http_wait}s: {early}"
        if r["fault"] == "server_busy":
            early = [x for x in reqs if x["mailbox"] == r["mailbox"]
                     and r["time"] + IN_FLIGHT_SLACK < x["time"] < r["time"] + busy_wait]
            assert early == [], f"requests to a busy mailbox within {busy_wait}s: {early}"


def requests_of(sim, op, mailbox=None):
    return [r for r in sim.requests()
            if r["op"] == op and (mailbox is None or r["mailbox"] == mailbox)]


def test_kill_9_at_random_moments_never_loses_or_duplicates(db, sim, daemon_factory, tmp_path):
    """20 kill -9 at random moments during a 500-log burst."""
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    sim.fault(mode="delay", ms=5, count=-1)   # widen the windows a kill can land in
    d = daemon_factory(FAST_RETRY)
    rng = random.Random(9)
    ids = []

    def burst(conninfo):
        conn = psycopg2.connect(conninfo)
        conn.autocommit = True
        with conn.cursor() as cur:
            for n in range(500):
                cur.execute("INSERT INTO contactlog.contact_log (created_by, contact_name, "
                            "reason, next_contact_at) VALUES (%s, %s, %s, "
                            "'2030-01-01 09:00+00') RETURNING id",
                            (alice, f"Customer {n}", f"burst {n}"))
                ids.append(cur.fetchone()[0])
        conn.close()

    writer = threading.Thread(target=burst, args=(db.conn.dsn,))
    writer.start()
    for _ in range(20):
        # Random moments: let it run a little, then kill without warning.
        wait_for(lambda: d.proc.poll() is None, what="followupd running")
        time.sleep(rng.uniform(0.02, 0.3))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.log.close()
        d.start()
    writer.join()
    assert len(ids) == 500
    db.wait_synced(*ids, timeout=120)
    sim.call("DELETE", "/_sim/faults")

    counts = appointments_per_log(sim, "alice@example.org")
    missing = [i for i in ids if counts.get(f"contactlog:{i}:appointment", 0) == 0]
    duplicated = {tag: n for tag, n in counts.items() if n > 1}
    assert missing == [], f"{len(missing)} logs never delivered"
    assert duplicated == {}, f"duplicates: {duplicated}"
    assert sum(counts.values()) == 500


def test_server_busy_mailbox_waits_while_others_go_ahead(db, sim, daemon_factory):
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    bob = db.employee("bob", "Bob Baker", "bob@example.org")
    daemon_factory(FAST_RETRY)
    sim.fault(mode="server_busy", back_off_ms=1500, count=1, ops=["CreateItem"],
              mailboxes=["alice@example.org"])
    a = db.log(alice, reason="alice first")
    wait_for(lambda: any(r["fault"] == "server_busy" for r in sim.requests()),
             what="the busy answer")
    busy_at = next(r["time"] for r in sim.requests() if r["fault"] == "server_busy")
    more_for_alice = [db.log(alice, reason=f"alice {n}") for n in range(3)]
    b = db.log(bob, reason="bob")
    db.wait_synced(b)
    bob_done = requests_of(sim, "CreateItem", "bob@example.org")[0]["time"]
    assert bob_done < busy_at + 1.5, "bob's delivery waited for alice's throttled mailbox"
    db.wait_synced(a, *more_for_alice)
    later = [r for r in requests_of(sim, "CreateItem", "alice@example.org")
             if r["time"] > busy_at and r["fault"] is None]
    assert later, "alice's items were never sent again"
    assert min(r["time"] for r in later) >= busy_at + 1.5, \
        "a request reached the throttled mailbox before BackOffMilliseconds ended"
    assert len(sim.mailbox("alice@example.org")) == 4


def test_http_503_retry_after_is_honoured_for_every_request(db, sim, daemon_factory):
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    bob = db.employee("bob", "Bob Baker", "bob@example.org")
    daemon_factory(FAST_RETRY)
    sim.fault(mode="http_status", status=503, retry_after=2, count=1)
    a = db.log(alice)
    wait_for(lambda: any(r["http_status"] == 503 for r in sim.requests()), what="the 503")
    refused_at = next(r["time"] for r in sim.requests() if r["http_status"] == 503)
    b = db.log(bob)
    db.wait_synced(a, b)
    after = [r for r in sim.requests() if r["time"] > refused_at]
    assert after, "nothing was sent after the 503"
    assert min(r["time"] for r in after) >= refused_at + 2.0, "Retry-After not honoured"
    assert len(sim.mailbox("alice@example.org")) == 1
    assert len(sim.mailbox("bob@example.org")) == 1


def test_permanent_error_parks_with_reason_and_retry_requeues(db, sim, daemon_factory):
    from conftest import run_ctl
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    d = daemon_factory(FAST_RETRY)
    sim.fault(mode="response_code", code="ErrorNonExistentMailbox", count=1)
    log_id = db.log(alice)
    wait_for(lambda: db.value("SELECT failed FROM contactlog.followupd_log_state "
                              "WHERE contact_log_id = %s", log_id), what="the log parked")
    assert "ErrorNonExistentMailbox" in db.value(
        "SELECT last_error FROM contactlog.followupd_log_state WHERE contact_log_id = %s", log_id)
    assert len(requests_of(sim, "CreateItem")) == 1, "a permanent error must not be retried"
    status = run_ctl(d.config_path, "status", "--json")
    assert status.returncode == 0 and '"failed": 1' in status.stdout
    result = run_ctl(d.config_path, "retry", "--failed")
    assert result.returncode == 0, result.stderr
    db.wait_synced(log_id)
    assert len(sim.mailbox("alice@example.org")) == 1


def test_max_attempts_parks_the_log(db, sim, daemon_factory):
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    daemon_factory("[delivery]\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\nmax_attempts = 3\n")
    sim.fault(mode="http_status", status=500, count=-1)
    log_id = db.log(alice)
    wait_for(lambda: db.value("SELECT failed FROM contactlog.followupd_log_state "
                              "WHERE contact_log_id = %s", log_id), what="the log parked")
    sim.call("DELETE", "/_sim/faults")
    assert db.value("SELECT attempts FROM contactlog.followupd_log_state WHERE contact_log_id = %s",
                    log_id) == 3
    # One create, then lookups (the create's outcome was unknown): three in all.
    assert len(sim.requests()) == 3
    assert len(requests_of(sim, "CreateItem")) == 1


@pytest.fixture
def own_pg():
    cluster = PgCluster().start()
    cluster.psql("-f", INSTALL_SQL)
    yield cluster
    cluster.stop()


def test_database_outage_and_exchange_throttling_lose_nothing(own_pg, sim, tmp_path):
    """PostgreSQL stopped for 10 s mid-burst; Exchange answering 503 and
    ErrorServerBusy for 30 s. Everything arrives afterwards, exactly once, and no
    request beats the wait it was told."""
    sim.reset()
    db = Database(own_pg)
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    d = Daemon(str(tmp_path), own_pg, sim, FAST_RETRY).start()
    try:
        first = [db.log(alice, reason=f"before {n}") for n in range(20)]
        db.wait_synced(*first)
        # Exchange throttles for 30 s: 503 + Retry-After, then ErrorServerBusy.
        throttle_start = time.time()
        sim.call("POST", "/_sim/faults",
                 [dict(mode="http_status", status=503, retry_after=3, count=3),
                  dict(mode="server_busy", back_off_ms=4000, count=-1)])
        burst = [db.log(alice, reason=f"during {n}") for n in range(30)]
        db.close()

        own_pg.pg_ctl("stop")
        stopped = time.monotonic()
        d.notify.poll()
        wait_for(lambda: "database connection lost" in d.output(), what="the loss noticed")
        while time.monotonic() - stopped < 10:
            assert d.proc.poll() is None, "followupd died while the database was down"
            time.sleep(0.5)
        own_pg.pg_ctl("start")

        db = Database(own_pg)
        late = [db.log(alice, reason=f"after restart {n}") for n in range(10)]
        while time.time() - throttle_start < 30:
            time.sleep(0.5)
        sim.call("DELETE", "/_sim/faults")
        db.wait_synced(*first, *burst, *late, timeout=90)

        counts = appointments_per_log(sim, "alice@example.org")
        assert sum(counts.values()) == 60 and max(counts.values()) == 1
        assert_waits_honoured(sim.requests(), http_wait=3.0, busy_wait=4.0)
        assert "reconnect" in d.output()
    except BaseException:
        with open("/tmp/outage-daemon.log", "w") as f:
            f.write(d.output())
        raise
    finally:
        db.close()
        code = d.stop()
        d.notify.close()
    assert code == 0
