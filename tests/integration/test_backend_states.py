"""States of the whole daemon, not verdicts on logs (issue 12): a refused service
account, throttling, a database that is down at boot or read-only. Delivery pauses,
STATUS= says what it waits for, nothing is parked or charged an attempt, and it goes
on by itself once the fault is gone."""
import os

from conftest import Daemon, Database, INSTALL_SQL, daemon_conninfo  # noqa: F401
from pgcluster import PgCluster, wait_for

BACKENDS = ["ews", "graph"]
FAST = ("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_attempts = 100\n"
        "settle_ms = 300\n")


def status_lines(daemon):
    return [m for m in daemon.notify.poll() if "STATUS=" in m]


def test_a_transient_401_parks_nothing(db, sim, daemon_factory, backend):
    """The service account is refused once (Graph: a fresh token is refused too): the
    daemon pauses, says so, and delivers everything without an operator."""
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    d = daemon_factory(FAST)
    # Graph asks for a new token after a 401 and tries each call once more.
    sim.fault(mode="http_status", status=401, count=1 if backend == "ews" else 6,
              ops=sim.ops("CreateItem"))
    ids = [db.log(alice, reason=f"after the 401 {n}") for n in range(3)]
    d.notify.wait_for("waiting for Exchange to accept the service account", timeout=10)
    db.wait_synced(*ids, timeout=30)
    assert db.value("SELECT count(*) FROM contactlog.followupd_log_state WHERE failed") == 0
    assert db.value("SELECT max(attempts) FROM contactlog.followupd_log_state") == 0
    assert len(sim.mailbox("alice@example.org")) == 3
    # The status line no longer says so once it works again.
    wait_for(lambda: "delivering" in status_lines(d)[-1], timeout=10,
             what="STATUS= to drop the credentials problem")


def test_throttling_spends_no_attempts(db, sim, daemon_factory, backend):
    """Five throttled answers in a row with max_attempts = 2: the log waits them out
    and is delivered, never parked (EWS ErrorServerBusy, Graph 429)."""
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    daemon_factory("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n"
                   "max_attempts = 2\nsettle_ms = 300\n")
    if backend == "ews":
        sim.fault(mode="server_busy", back_off_ms=200, count=5, ops=sim.ops("CreateItem"))
    else:
        sim.fault(mode="http_status", status=429, retry_after=1, count=5,
                  ops=sim.ops("CreateItem"))
    log_id = db.log(alice, reason="throttled")
    db.wait_synced(log_id, timeout=30)
    assert db.value("SELECT failed FROM contactlog.followupd_log_state "
                    "WHERE contact_log_id = %s", log_id) is False
    assert len(sim.mailbox("alice@example.org")) == 1
    throttled = [r for r in sim.requests() if r["fault"] in ("server_busy", "http_status")]
    assert len(throttled) == 5


def deliver_one_then_stop(cluster, d, sim, reason):
    """A log saved now is delivered; then the daemon stops cleanly."""
    db = Database(cluster)
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    log_id = db.log(alice, reason=reason)
    db.wait_synced(log_id, timeout=30)
    assert len(sim.mailbox("alice@example.org")) == 1
    db.close()
    assert d.stop() == 0
    d.notify.close()


def test_database_down_at_boot_still_reports_ready(ews_sim, tmp_path):
    """Type=notify: READY=1 once the configuration is loaded; STATUS= says the daemon
    waits for the database; once PostgreSQL is up, what was saved is delivered."""
    ews_sim.reset()
    cluster = PgCluster().start()
    try:
        cluster.psql("-f", INSTALL_SQL)
        d = Daemon(str(tmp_path), cluster, ews_sim, FAST)   # (makes the daemon's login)
        cluster.pg_ctl("stop")
        d.start(wait_ready=True)   # READY=1 although the database is down
        d.notify.wait_for("waiting for the database", timeout=10)
        cluster.pg_ctl("start")
        deliver_one_then_stop(cluster, d, ews_sim, "saved while the daemon waited")
    finally:
        cluster.stop()


class Standby(PgCluster):
    """A hot standby of primary, made with pg_basebackup -R."""

    def __init__(self, primary):
        super().__init__(primary.dbname)
        self.primary = primary

    def start(self):
        self._run([os.path.join(self.bindir, "pg_basebackup"), "-h", "127.0.0.1",
                   "-p", str(self.primary.port), "-U", self.superuser, "-D", self.datadir,
                   "-R", "-X", "stream"])
        conf = os.path.join(self.datadir, "postgresql.conf")
        self._run(["sh", "-c", f"printf '\\nport = {self.port}\\nunix_socket_directories = "
                               f"'\"'\"'{self.dir}'\"'\"'\\n' >> {conf}"])
        self.pg_ctl("start")
        return self


def test_standby_is_waited_out_and_its_promotion_followed(ews_sim, tmp_path):
    """The daemon is pointed at a hot standby (a fail-over not finished yet): LISTEN is
    refused, the daemon says so and keeps trying; once the standby is promoted,
    delivery resumes within 30 s."""
    ews_sim.reset()
    primary = PgCluster().start()
    standby = None
    try:
        primary.psql("-f", INSTALL_SQL)
        daemon_conninfo(primary)   # the daemon's login exists before the copy
        standby = Standby(primary).start()
        d = Daemon(str(tmp_path), primary, ews_sim, FAST)
        with open(d.config_path) as f:
            text = f.read()
        with open(d.config_path, "w") as f:
            f.write(text.replace(f"port={primary.port}", f"port={standby.port}"))
        d.start(wait_ready=True)
        d.notify.wait_for("LISTEN refused", timeout=20)
        assert d.proc.poll() is None
        primary.pg_ctl("stop")
        standby.pg_ctl("promote")
        deliver_one_then_stop(standby, d, ews_sim, "after the promotion")
    finally:
        if standby:
            standby.stop()
        primary.stop()
