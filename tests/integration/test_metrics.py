"""GET /metrics (issue 15): with [metrics] listen set, the daemon serves the
Prometheus text format, and the figures move as work happens: deliveries, retries,
throttling, parked logs, a refused service account. Scraped with prometheus_client's
own parser, as Prometheus would read it."""
import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FOLLOWUPD, SLOW, SRCDIR, Daemon, run_ctl
from pgcluster import free_port, wait_for

BACKENDS = ["ews", "graph"]
MAILBOX = "alice@example.org"
FAST = ("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_attempts = 100\n"
        "settle_ms = 300\n")
# A transient error waits minutes: the log stays pending until flushed.
SLOW_RETRY = "[delivery]\nbackoff_initial_ms = 600000\nbackoff_max_ms = 900000\n"
OPERATIONS = ["lookup", "create", "update", "delete"]
OUTCOMES = ["ok", "not_found", "retry", "failed", "throttled", "unknown", "auth", "not_sent"]


def documented_families():
    """{name: type} of the METRICS section of followupd(8): '.B name' then '(type)'."""
    with open(os.path.join(SRCDIR, "docs", "followupd.8")) as f:
        page = f.read()
    section = page.split(".SH METRICS", 1)[1].split("\n.SH ", 1)[0]
    found = re.findall(r"^\.B (followupd_\w+)\n\((counter|gauge|histogram)", section, re.M)
    assert found, "followupd(8) lists no metrics"
    return dict(found)


class Metrics:
    def __init__(self, url):
        self.url = url

    def fetch(self):
        with urllib.request.urlopen(self.url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()

    def families(self):
        return {f.name: f for f in text_string_to_metric_families(self.fetch()[2])}

    def value(self, name, **labels):
        """The sample name{labels...} (labels: a subset), None when absent."""
        for family in self.families().values():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return None

    def wait(self, name, predicate, what, timeout=10, **labels):
        return wait_for(lambda: predicate(self.value(name, **labels)), timeout=timeout * SLOW,
                        what=f"{name}{labels or ''} to show {what}")


@pytest.fixture
def metrics_daemon(daemon_factory):
    """A daemon started with [metrics] listen on a free loopback port."""
    def start(extra=""):
        port = free_port()
        d = daemon_factory(f"{extra}\n[metrics]\nlisten = 127.0.0.1:{port}\n")
        d.metrics = Metrics(f"http://127.0.0.1:{port}/metrics")
        # The queue figures come with the first status query after the connection.
        d.metrics.wait("followupd_pending_logs", lambda v: v is not None, "a value")
        return d
    return start


@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


def test_every_documented_family_is_served(db, sim, metrics_daemon):
    m = metrics_daemon().metrics
    status, content_type, _ = m.fetch()
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = m.families()
    documented = documented_families()
    # prometheus_client names a counter family without its _total suffix.
    served = {(f.name + "_total" if f.type == "counter" else f.name): f.type
              for f in families.values()}
    assert served == documented
    for f in families.values():
        assert f.documentation, f"{f.name} has no HELP text"
    for op in OPERATIONS:
        for outcome in OUTCOMES:
            assert m.value("followupd_requests_total", operation=op, outcome=outcome) == 0
        assert m.value("followupd_request_duration_seconds_count", operation=op) == 0
        assert m.value("followupd_request_duration_seconds_bucket", operation=op,
                       le="+Inf") == 0
    assert m.value("followupd_database_connected") == 1
    assert m.value("followupd_backend_state", state="ok") == 1
    assert m.value("followupd_backend_state", state="auth_failing") == 0
    assert m.value("followupd_outlook_changes_total", result="applied") == 0
    assert m.value("followupd_outlook_changes_total", result="refused") == 0
    assert m.value("followupd_throttled_mailboxes") == 0
    assert m.value("followupd_parked_logs") == 0


def test_deliveries_move_the_counters_and_the_queue(db, sim, metrics_daemon, alice):
    m = metrics_daemon().metrics
    ids = [db.log(alice, reason=f"metrics {n}") for n in range(3)]
    db.wait_synced(*ids)
    m.wait("followupd_requests_total", lambda v: v == 3, "3 creates",
           operation="create", outcome="ok")
    assert m.value("followupd_request_duration_seconds_count", operation="create") == 3
    assert m.value("followupd_request_duration_seconds_bucket", operation="create",
                   le="+Inf") == 3
    assert m.value("followupd_request_duration_seconds_sum", operation="create") > 0
    m.wait("followupd_pending_logs", lambda v: v == 0, "an empty queue")
    assert m.value("followupd_oldest_pending_seconds") == 0
    assert m.value("followupd_logs_in_progress") == 0
    # An edit is an update.
    db.query("UPDATE contactlog.contact_log SET reason = 'changed' WHERE id = %s", ids[0])
    m.wait("followupd_requests_total", lambda v: v == 1, "the update",
           operation="update", outcome="ok")
    assert m.value("followupd_request_duration_seconds_count", operation="update") == 1


def test_a_waiting_log_shows_as_pending_until_it_goes(db, sim, metrics_daemon, alice):
    d = metrics_daemon(SLOW_RETRY)
    m = d.metrics
    sim.fault(mode="http_status", status=500, count=1, ops=sim.ops("CreateItem"))
    log_id = db.log(alice)
    m.wait("followupd_requests_total", lambda v: v == 1, "the failed create",
           operation="create", outcome="retry")
    m.wait("followupd_pending_logs", lambda v: v == 1, "the waiting log")
    m.wait("followupd_oldest_pending_seconds", lambda v: v is not None and v >= 1,
           "its age")
    assert run_ctl(d.config_path, "flush", str(log_id)).returncode == 0
    db.wait_synced(log_id)
    m.wait("followupd_requests_total", lambda v: v == 1, "the create",
           operation="create", outcome="ok")
    m.wait("followupd_pending_logs", lambda v: v == 0, "an empty queue")
    assert m.value("followupd_oldest_pending_seconds") == 0


def test_throttling_counts_a_hold_and_the_mailbox_held(db, sim, metrics_daemon, alice,
                                                      backend):
    m = metrics_daemon(FAST).metrics
    if backend == "ews":
        sim.fault(mode="server_busy", back_off_ms=3000, count=1, ops=sim.ops("CreateItem"))
    else:
        sim.fault(mode="http_status", status=429, retry_after=3, count=1,
                  ops=sim.ops("CreateItem"))
    log_id = db.log(alice, reason="throttled")
    m.wait("followupd_throttling_holds_total", lambda v: v == 1, "the hold", scope="mailbox")
    assert m.value("followupd_requests_total", operation="create", outcome="throttled") == 1
    m.wait("followupd_throttled_mailboxes", lambda v: v == 1, "alice's mailbox held")
    db.wait_synced(log_id, timeout=15)
    m.wait("followupd_throttled_mailboxes", lambda v: v == 0, "no mailbox held")
    assert m.value("followupd_throttling_holds_total", scope="server") == 0
    assert m.value("followupd_requests_total", operation="create", outcome="ok") == 1


def test_a_parked_log_shows_in_the_parked_gauge(db, sim, metrics_daemon, alice, backend):
    m = metrics_daemon(SLOW_RETRY).metrics
    if backend == "ews":
        sim.fault(mode="response_code", code="ErrorNonExistentMailbox", count=1)
    else:
        sim.fault(mode="http_status", status=400, code="ErrorInvalidUser", count=1,
                  ops=sim.ops("CreateItem"))
    db.log(alice, reason="parked")
    m.wait("followupd_parked_logs", lambda v: v == 1, "the parked log")
    assert m.value("followupd_requests_total", operation="create", outcome="failed") == 1
    assert m.value("followupd_pending_logs") == 0


def test_a_refused_service_account_shows_as_auth_failing(db, sim, metrics_daemon, alice,
                                                        backend):
    m = metrics_daemon(FAST).metrics
    # Graph asks for a new token after a 401 and tries each call once more.
    sim.fault(mode="http_status", status=401, count=1 if backend == "ews" else 6,
              ops=sim.ops("CreateItem"))
    log_id = db.log(alice)
    m.wait("followupd_backend_state", lambda v: v == 1, "auth failing", state="auth_failing")
    assert m.value("followupd_backend_state", state="ok") == 0
    assert m.value("followupd_requests_total", operation="create", outcome="auth") >= 1
    db.wait_synced(log_id, timeout=30)
    m.wait("followupd_backend_state", lambda v: v == 1, "ok again", state="ok")
    assert m.value("followupd_backend_state", state="auth_failing") == 0
    assert m.value("followupd_parked_logs") == 0


def test_only_get_metrics_is_served(db, sim, metrics_daemon):
    m = metrics_daemon().metrics
    base = m.url.rsplit("/", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as other:
        urllib.request.urlopen(base + "/", timeout=5)
    assert other.value.code == 404
    post = urllib.request.Request(m.url, data=b"x=1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(post, timeout=5)
    assert posted.value.code == 405
    assert posted.value.headers["Allow"] == "GET"
    assert m.fetch()[0] == 200   # still serving


def test_ipv6_loopback_and_a_clean_exit(db, sim, daemon_factory, alice):
    port = free_port()
    d = daemon_factory(f"[metrics]\nlisten = [::1]:{port}\n")
    m = Metrics(f"http://[::1]:{port}/metrics")
    log_id = db.log(alice)
    db.wait_synced(log_id)
    m.wait("followupd_requests_total", lambda v: v == 1, "the create",
           operation="create", outcome="ok")
    # A scraper holding a connection open does not keep the daemon from exiting.
    idle = socket.create_connection(("::1", port))
    try:
        assert d.stop() == 0
    finally:
        idle.close()


BAD_LISTEN = ["127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
              ":9477", "::1:9477", "[::1]9477", "[::1:9477", "local host:9477"]


def test_a_bad_listen_value_fails_check_naming_the_key(db, sim, daemon_factory):
    d = daemon_factory(start=False)
    base = open(d.config_path).read()
    for value in BAD_LISTEN:
        with open(d.config_path, "w") as f:
            f.write(f"{base}\n[metrics]\nlisten = {value}\n")
        result = subprocess.run([FOLLOWUPD, "--check", "-c", d.config_path],
                                capture_output=True, text=True)
        assert result.returncode == 1, f"listen = {value} was accepted"
        assert "[metrics] listen" in result.stderr, result.stderr
        assert "HOST:PORT" in result.stderr
    # (--check may still refuse the test's secret files: only [metrics] matters here.)
    for value in ["127.0.0.1:9477", "[::1]:9477", "localhost:9477", "0.0.0.0:9477"]:
        with open(d.config_path, "w") as f:
            f.write(f"{base}\n[metrics]\nlisten = {value}\n")
        result = subprocess.run([FOLLOWUPD, "--check", "-c", d.config_path],
                                capture_output=True, text=True)
        assert "[metrics]" not in result.stderr, f"listen = {value}: {result.stderr}"


def test_a_port_in_use_fails_the_start(pg, sim, db, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    d = Daemon(str(tmp_path), pg, sim, f"[metrics]\nlisten = 127.0.0.1:{port}\n")
    try:
        d.start(wait_ready=False)
        assert d.proc.wait(timeout=10 * SLOW) == 1
        assert not any("READY=1" in msg for msg in d.notify.poll())
        out = d.output()
        assert "[metrics] listen" in out and "Address already in use" in out, out
    finally:
        taken.close()
        if d.proc and d.proc.poll() is None:
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
        if d.proc:
            d.log.close()
        d.notify.close()
