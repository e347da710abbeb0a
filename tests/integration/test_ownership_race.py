"""Two sessions acting on the same contact log at once (issue 5, SPEC §2
"Ownership"), on a real PostgreSQL with two real connections.

The ownership functions lock the log row (SELECT ... FOR UPDATE), so the second
caller waits for the first and then decides on what the first committed. The
tests make the overlap certain instead of hoping for it: session A acts inside an
open transaction, session B's call runs in a thread, and the test waits until
PostgreSQL reports B blocked by A (pg_blocking_pids) before A commits.

The sessions log in as the roles of SPEC §2 (issue 14): each person with their own
login, a member of contactlog_staff, acting as themselves; the busy day as a
trusted front end (contactlog_app) naming the actor per transaction. None is a
superuser, so the rules hold as they would against a real client. The end of the
file covers the roles themselves: the daemon's login, and migrate leaving an
operator's grants alone.
"""
import random
import threading

import psycopg2
import pytest

from conftest import DAEMON_LOGIN, INSTALL_SQL
from pgcluster import wait_for

APP_LOGIN = "crm_app_test"


def ensure_login(pg, login, group):
    """A login role in group (roles belong to the cluster: made once, kept)."""
    pg.psql("-c", f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{login}') "
                  f"THEN CREATE ROLE {login} LOGIN IN ROLE {group}; END IF; END $$")


@pytest.fixture
def staff_login(pg, db):
    """Makes an employee with a database login of the same name (contactlog_staff)."""
    def make(login, name, email=None, role="staff"):
        ensure_login(pg, login, "contactlog_staff")
        return db.employee(login, name, email, role=role)
    return make


@pytest.fixture
def people(staff_login):
    return {
        "alice": staff_login("alice", "Alice Archer", "alice@example.org"),
        "bob": staff_login("bob", "Bob Baker", "bob@example.org"),
        "dora": staff_login("dora", "Dora Admin", "dora@example.org", role="admin"),
    }


@pytest.fixture
def connect(pg):
    """connect(login): a connection as that login; APP_LOGIN is the front end's."""
    ensure_login(pg, APP_LOGIN, "contactlog_app")
    opened = []

    def make(login, autocommit=False):
        conn = psycopg2.connect(pg.conninfo_as(login))
        conn.autocommit = autocommit
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


class Call(threading.Thread):
    """Runs one statement on its own connection in a thread; keeps the rows or the error."""

    def __init__(self, conn, sql, *args, barrier=None):
        super().__init__(daemon=True)
        self.conn, self.sql, self.args, self.barrier = conn, sql, args, barrier
        self.pid = conn.get_backend_pid()
        self.rows = self.error = None

    def run(self):
        if self.barrier:
            self.barrier.wait(10)
        try:
            with self.conn.cursor() as cur:
                cur.execute(self.sql, self.args)
                self.rows = cur.fetchall() if cur.description else []
            if not self.conn.autocommit:
                self.conn.commit()
        except psycopg2.Error as e:
            self.error = e
            self.conn.rollback()

    def finish(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), f"the call in session {self.pid} did not finish"
        return self


def wait_blocked(db, call, by_pid):
    """Waits until PostgreSQL reports call's session waiting for by_pid's lock."""
    wait_for(lambda: by_pid in (db.value("SELECT pg_blocking_pids(%s)", call.pid) or []),
             timeout=10, what=f"session {call.pid} to wait for session {by_pid}")
    assert db.value("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", call.pid) == "Lock"


def open_log(db, creator):
    return db.log(creator, status="open")


def state(db, log_id):
    return db.query("SELECT status, owner_id FROM contactlog.contact_log WHERE id = %s", log_id)[0]


def test_two_takes_of_an_open_log_one_wins(db, people, connect):
    log_id = open_log(db, people["alice"])
    a, b = connect("alice"), connect("bob", autocommit=True)

    with a.cursor() as cur:   # A takes the log and keeps its transaction open
        cur.execute("SELECT (contactlog.take(%s)).owner_id", (log_id,))
        assert cur.fetchone()[0] == people["alice"]
    call = Call(b, "SELECT (contactlog.take(%s)).owner_id", log_id)
    call.start()
    wait_blocked(db, call, a.get_backend_pid())
    a.commit()
    call.finish()

    assert call.rows is None, "both sessions took the log"
    assert call.error.pgcode == "42501"
    assert call.error.diag.message_primary == f"contact log {log_id} is locked by Alice Archer (alice)"
    assert state(db, log_id) == ("in_progress", people["alice"])


def test_first_taker_rolls_back_then_the_second_wins(db, people, connect):
    log_id = open_log(db, people["alice"])
    a, b = connect("alice"), connect("bob", autocommit=True)

    with a.cursor() as cur:
        cur.execute("SELECT contactlog.take(%s)", (log_id,))
    call = Call(b, "SELECT (contactlog.take(%s)).owner_id", log_id)
    call.start()
    wait_blocked(db, call, a.get_backend_pid())
    a.rollback()
    call.finish()

    assert call.error is None
    assert call.rows == [(people["bob"],)]
    assert state(db, log_id) == ("in_progress", people["bob"])


def test_admin_takes_over_after_the_owner_commits(db, people, connect):
    log_id = open_log(db, people["alice"])
    a, b = connect("alice"), connect("dora", autocommit=True)

    with a.cursor() as cur:
        cur.execute("SELECT contactlog.take(%s)", (log_id,))
    call = Call(b, "SELECT (contactlog.take(%s)).owner_id", log_id)
    call.start()
    wait_blocked(db, call, a.get_backend_pid())
    a.commit()
    call.finish()

    assert call.error is None, call.error
    assert state(db, log_id) == ("in_progress", people["dora"])


def test_repeatable_read_loser_gets_a_serialization_failure(db, people, connect):
    log_id = open_log(db, people["alice"])
    a, b = connect("alice"), connect("bob")
    b.set_session(isolation_level="REPEATABLE READ")

    with b.cursor() as cur:   # B's snapshot predates A's take
        cur.execute("SELECT 1")
    with a.cursor() as cur:
        cur.execute("SELECT contactlog.take(%s)", (log_id,))
    call = Call(b, "SELECT contactlog.take(%s)", log_id)
    call.start()
    wait_blocked(db, call, a.get_backend_pid())
    a.commit()
    call.finish()

    assert call.error is not None and call.error.pgcode == "40001"   # retry it, then it is refused
    assert state(db, log_id) == ("in_progress", people["alice"])


def test_update_waiting_for_a_surrender_is_refused(db, people, connect):
    """A plain UPDATE is checked against the row as committed by the session it
    waited for, not the one it first saw: bob's front end (naming bob) edits while
    bob, logged in himself, surrenders the log."""
    log_id = db.log(people["bob"])   # in progress, bob's
    a, b = connect("bob"), connect(APP_LOGIN)

    with a.cursor() as cur:
        cur.execute("SELECT contactlog.surrender(%s)", (log_id,))
    with b.cursor() as cur:
        cur.execute("SET LOCAL contactlog.actor = %s", (str(people["bob"]),))
    call = Call(b, "UPDATE contactlog.contact_log SET reason = 'late edit' WHERE id = %s", log_id)
    call.start()
    wait_blocked(db, call, a.get_backend_pid())
    a.commit()
    call.finish()

    assert call.error is not None and call.error.pgcode == "42501"
    assert call.error.diag.message_primary == f"contact log {log_id} is open (locked by nobody)"
    assert db.value("SELECT reason FROM contactlog.contact_log WHERE id = %s", log_id) != "late edit"


def test_simultaneous_takes_exactly_one_wins(db, people, connect, staff_login):
    """No forced overlap here: both start together many times; never two winners."""
    others = {f"u{i}": staff_login(f"u{i}", f"User {i}") for i in range(2)}
    for _ in range(20):
        log_id = open_log(db, people["alice"])
        start = threading.Barrier(2)
        calls = [Call(connect(login, autocommit=True), "SELECT (contactlog.take(%s)).owner_id",
                      log_id, barrier=start)
                 for login in others]
        for call in calls:
            call.start()
        for call in calls:
            call.finish()
        winners = [c for c in calls if c.error is None]
        losers = [c for c in calls if c.error is not None]
        assert len(winners) == 1 and len(losers) == 1
        assert losers[0].error.pgcode == "42501"
        assert state(db, log_id) == ("in_progress", winners[0].rows[0][0])


def test_counting_never_makes_writers_wait(db, people, connect):
    """Two transactions bump the same two counters in opposite orders (the classic
    counter deadlock). Neither waits: a writer finding a count row locked appends
    a delta instead, and the next writer folds the deltas in."""
    insert = ("INSERT INTO contactlog.contact_log (created_by, contact_name, status, next_contact_at) "
              "VALUES (%s, 'c', %s, %s)")
    first = (people["alice"], "open", None)
    second = (people["alice"], "completed", "2030-01-01 10:00+00")
    deltas = "SELECT count(*) FROM contactlog.contact_log_tally WHERE NOT is_base"

    # Round 1 creates the count rows, round 2 finds them and locks them.
    for n in (1, 2):
        a, b = connect("alice"), connect("alice")
        for conn in (a, b):
            with conn.cursor() as cur:
                cur.execute("SET LOCAL statement_timeout = '5s'")   # a wait would fail, not hang
        with a.cursor() as cur:
            cur.execute(insert, first)
        with b.cursor() as cur:
            cur.execute(insert, second)
        with a.cursor() as cur:
            cur.execute(insert, second)   # b holds this count row: no wait
        with b.cursor() as cur:
            cur.execute(insert, first)    # a holds this one: no wait
        a.commit()
        b.commit()

        assert db.query("SELECT open, completed FROM contactlog.summary") == [(3 * n - 1, 3 * n - 1)]
        assert db.value(deltas) > 0
        db.query(insert, *first)     # uncontended: folds the deltas of its key
        db.query(insert, *second)
        assert db.value(deltas) == 0
        assert db.query("SELECT open, completed FROM contactlog.summary") == [(3 * n, 3 * n)]
    assert db.query("SELECT count(*) FILTER (WHERE status = 'open'), "
                    "count(*) FILTER (WHERE status = 'completed') FROM contactlog.contact_log") == [(6, 6)]


def test_busy_day_keeps_the_counts_exact(db, people, connect):
    """Four sessions take, surrender, assign, complete, edit, create and delete logs
    as fast as they can; afterwards every count (contactlog.summary, list_logs'
    total) equals a count over the logs, and nothing deadlocked."""
    staff = [people["alice"], people["bob"], people["dora"]]
    for i in range(40):
        db.log(staff[i % 3], status="open" if i % 2 else "in_progress",
               next_contact_at=None if i % 3 == 0 else "2030-03-01 09:00:00+00")
    log_ids = [r[0] for r in db.query("SELECT id FROM contactlog.contact_log")]
    operations = [
        "SELECT contactlog.take(%(log)s, %(actor)s)",
        "SELECT contactlog.surrender(%(log)s, %(actor)s)",
        "SELECT contactlog.complete(%(log)s, %(actor)s)",
        "SELECT contactlog.assign(%(log)s, %(actor)s, %(other)s)",
        "UPDATE contactlog.contact_log SET next_contact_at = CASE WHEN next_contact_at IS NULL "
        "THEN now() + interval '1 day' END WHERE id = %(log)s",
        "INSERT INTO contactlog.contact_log (created_by, contact_name, next_contact_at) "
        "VALUES (%(actor)s, 'new', now())",
        "DELETE FROM contactlog.contact_log WHERE id = %(log)s",
    ]
    unexpected, committed = [], []

    def worker(seed):
        rnd = random.Random(seed)
        conn = connect(APP_LOGIN)
        for _ in range(150):
            actor = rnd.choice(staff)
            args = {"log": rnd.choice(log_ids), "actor": actor, "other": rnd.choice(staff)}
            try:
                with conn.cursor() as cur:
                    cur.execute("SET LOCAL contactlog.actor = %s", (str(actor),))
                    for _ in range(rnd.randint(1, 3)):   # several changes per transaction
                        cur.execute(rnd.choice(operations), args)
                conn.commit()
                committed.append(seed)
            except psycopg2.Error as e:
                conn.rollback()
                if e.pgcode not in ("42501", "P0002"):   # refusals and deleted logs are normal
                    unexpected.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert unexpected == []
    assert len(committed) > 100, "too few transactions got through to prove anything"

    assert db.query("SELECT open, in_progress, completed, open_follow_ups FROM contactlog.summary") == \
        db.query("SELECT count(*) FILTER (WHERE status = 'open'), count(*) FILTER (WHERE status = 'in_progress'), "
                 "count(*) FILTER (WHERE status = 'completed'), "
                 "count(*) FILTER (WHERE status <> 'completed' AND next_contact_at IS NOT NULL) "
                 "FROM contactlog.contact_log")
    assert db.query("SELECT status, owner_id, follow_up, sum(n) FROM contactlog.contact_log_tally "
                    "GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3") == \
        db.query("SELECT status, owner_id, next_contact_at IS NOT NULL, count(*) FROM contactlog.contact_log "
                 "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    assert db.value("SELECT DISTINCT total_count FROM contactlog.list_logs(status => 'in_progress')") in \
        (None, db.value("SELECT count(*) FROM contactlog.contact_log WHERE status = 'in_progress'"))


# ---- the roles (issue 14) -----------------------------------------------------------

def test_the_daemon_delivers_as_a_member_of_contactlog_daemon_only(db, sim, daemon, people):
    """The daemon's login is a member of contactlog_daemon and nothing else, not a
    superuser, and has no privilege to write any table; delivery works all the same."""
    assert db.query("SELECT r.rolsuper, ARRAY(SELECT g.rolname FROM pg_auth_members m "
                    "JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid) "
                    "FROM pg_roles r WHERE r.rolname = %s", DAEMON_LOGIN) == \
        [(False, ["contactlog_daemon"])]
    assert db.value("SELECT count(*) FROM pg_class c CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', "
                    "'DELETE', 'TRUNCATE']) p WHERE c.relnamespace = 'contactlog'::regnamespace "
                    "AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, p)", DAEMON_LOGIN) == 0
    log_id = db.log(people["alice"])
    db.wait_synced(log_id)
    assert len(sim.mailbox("alice@example.org")) == 1
    assert db.value("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                    DAEMON_LOGIN) >= 1, "the daemon is connected as its login"


def test_migrate_keeps_grants_an_operator_made(pg, db):
    """Re-running the installer touches no privilege granted to other roles; one
    that lets a role write followupd's bookkeeping is named in a warning."""
    ensure_login(pg, "crm_legacy_test", "contactlog_staff")
    pg.psql("-c", "GRANT UPDATE ON contactlog.outlook_sync TO crm_legacy_test; "
                  "GRANT SELECT ON contactlog.attribute TO crm_legacy_test")
    try:
        result = pg.psql("-f", INSTALL_SQL)
        assert "role crm_legacy_test may UPDATE on contactlog.outlook_sync" in result.stderr
        assert db.query("SELECT has_table_privilege('crm_legacy_test', 'contactlog.outlook_sync', "
                        "'UPDATE'), has_table_privilege('crm_legacy_test', 'contactlog.attribute', "
                        "'SELECT')") == [(True, True)]
    finally:
        pg.psql("-c", "REVOKE ALL ON contactlog.outlook_sync, contactlog.attribute "
                      "FROM crm_legacy_test")


def test_a_staff_login_cannot_act_for_someone_else(db, people, connect):
    """Over a real connection: naming another employee, by argument or setting, is
    refused, and so is editing someone else's log; nothing changes."""
    log_id = db.log(people["bob"])   # in progress, bob's
    conn = connect("alice", autocommit=True)

    def refusal(sql, *args):
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as refused:
                cur.execute(sql, args)
        assert refused.value.pgcode == "42501"
        return refused.value.diag.message_primary

    impersonation = "login alice acts as Alice Archer (alice) and may not act as Dora Admin (dora)"
    assert refusal("SELECT contactlog.take(%s, %s)", log_id, people["dora"]) == impersonation
    with conn.cursor() as cur:
        cur.execute("SET contactlog.actor = %s", (str(people["dora"]),))
    assert refusal("SELECT contactlog.take(%s)", log_id) == impersonation
    with conn.cursor() as cur:
        cur.execute("RESET contactlog.actor")
    assert refusal("UPDATE contactlog.contact_log SET reason = 'mine' WHERE id = %s", log_id) == \
        f"contact log {log_id} is locked by Bob Baker (bob)"
    assert refusal("UPDATE contactlog.contact_log SET owner_id = %s WHERE id = %s",
                   people["alice"], log_id) == "permission denied for table contact_log"
    assert state(db, log_id) == ("in_progress", people["bob"])
