"""Fixtures for the integration tests: a real PostgreSQL cluster, the EWS simulator
on loopback and the real followupd binary.

Paths come from the environment set by `make check` (top_srcdir, top_builddir);
run by hand with e.g.
    top_srcdir=$PWD top_builddir=$PWD/build python3 -m pytest tests/integration
"""
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg2
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pgcluster import PgCluster, wait_for  # noqa: E402

SRCDIR = os.path.abspath(os.environ.get("top_srcdir", os.path.join(os.path.dirname(__file__), "..", "..")))
BUILDDIR = os.path.abspath(os.environ.get("top_builddir", SRCDIR))
FOLLOWUPD = os.path.join(BUILDDIR, "followupd")
FOLLOWUPCTL = os.path.join(BUILDDIR, "followupctl")
INSTALL_SQL = os.path.join(SRCDIR, "sql", "install.sql")
SIM = os.path.join(SRCDIR, "tests", "sim", "ews_sim.py")
PYTHON = os.environ.get("PYTHON3") or "/usr/bin/python3"
EWS_USER, EWS_PASSWORD = "svc-followupd", "s3cret-Passw0rd!"
GRAPH_SIM = os.path.join(SRCDIR, "tests", "sim", "graph_sim.py")
GRAPH_CLIENT_ID, GRAPH_CLIENT_SECRET = "followupd-test", "graph-Cl1ent-s3cret!"
# A test module that sets BACKENDS = ["ews", "graph"] runs each of its tests once per
# back end ([exchange] api); modules without it run against EWS only.
# FOLLOWUPD_TEST_BACKENDS=graph (or ews) narrows that down.
ENABLED_BACKENDS = [b for b in os.environ.get("FOLLOWUPD_TEST_BACKENDS", "ews,graph").split(",")
                    if b]
# FOLLOWUPD_WRAPPER runs the daemon under e.g. valgrind (scripts/test does);
# timing assertions are relaxed then.
WRAPPER = shlex.split(os.environ.get("FOLLOWUPD_WRAPPER", ""))
SLOW = 10 if WRAPPER else 1


# The daemon (and followupctl with its configuration) connects as this login, a
# member of contactlog_daemon only, as the operator guide sets it up (SPEC §2):
# not a superuser, no privilege on any table. Test helpers (Database) stay
# superuser: they play the CRM and maintenance.
DAEMON_LOGIN = "followupd_test"


def daemon_conninfo(cluster):
    """conninfo of DAEMON_LOGIN on cluster, made there when missing (tests may start
    their own cluster); a member of contactlog_daemon once the schema is installed."""
    cluster.psql("-c", f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{DAEMON_LOGIN}') THEN
            CREATE ROLE {DAEMON_LOGIN} LOGIN;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'contactlog_daemon') THEN
            GRANT contactlog_daemon TO {DAEMON_LOGIN};
        END IF;
    END $$""")
    return cluster.conninfo_as(DAEMON_LOGIN)


@pytest.fixture(scope="session")
def pg():
    cluster = PgCluster().start()
    try:
        cluster.psql("-f", INSTALL_SQL)
        daemon_conninfo(cluster)
        yield cluster
    except BaseException:
        sys.stderr.write("---- postgres log ----\n" + cluster.log())
        raise
    finally:
        cluster.stop()


class Simulator:
    backend = "ews"
    # Operation names in the simulator's request log, by what they do (see ops()).
    OPS = {"CreateItem": ["CreateItem"], "UpdateItem": ["UpdateItem"],
           "DeleteItem": ["DeleteItem"], "FindItem": ["FindItem"]}

    def ops(self, *names):
        """This simulator's names for the EWS operations names (for request filters and
        fault ops): the Graph simulator has e.g. CreateEvent and CreateTask for CreateItem."""
        return [op for name in names for op in self.OPS.get(name, [name])]

    def __init__(self, workdir, extra_args=()):
        self.port_file = os.path.join(workdir, "sim.port")
        self.log_path = os.path.join(workdir, "sim.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PYTHON, SIM, "--port", "0", "--port-file", self.port_file,
             "--users", f"{EWS_USER}:{EWS_PASSWORD}"] + list(extra_args),
            stdout=self.log, stderr=subprocess.STDOUT)
        self.port = int(wait_for(self._read_port, timeout=15, what="the EWS simulator to listen"))
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/EWS/Exchange.asmx"

    def _read_port(self):
        if self.proc.poll() is not None:
            raise RuntimeError("EWS simulator exited: " + open(self.log_path).read())
        try:
            with open(self.port_file) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def mailbox(self, address):
        return self.call("GET", "/_sim/mailboxes").get(address, [])

    def mailboxes(self):
        return self.call("GET", "/_sim/mailboxes")

    def requests(self):
        return self.call("GET", "/_sim/requests")

    def fault(self, **spec):
        return self.call("POST", "/_sim/faults", spec)

    def reset(self):
        self.call("POST", "/_sim/reset")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class GraphSimulator(Simulator):
    """tests/sim/graph_sim.py: Microsoft Graph and its OAuth2 token endpoint."""
    backend = "graph"
    OPS = {"CreateItem": ["CreateEvent", "CreateTask"], "UpdateItem": ["PatchEvent", "PatchTask"],
           "DeleteItem": ["DeleteEvent", "DeleteTask"], "FindItem": ["FindEvents", "FindTasks"]}

    def __init__(self, workdir, extra_args=()):
        self.port_file = os.path.join(workdir, "graph_sim.port")
        self.log_path = os.path.join(workdir, "graph_sim.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PYTHON, GRAPH_SIM, "--port", "0", "--port-file", self.port_file,
             "--clients", f"{GRAPH_CLIENT_ID}:{GRAPH_CLIENT_SECRET}"] + list(extra_args),
            stdout=self.log, stderr=subprocess.STDOUT)
        self.port = int(wait_for(self._read_port, timeout=15,
                                 what="the Graph simulator to listen"))
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1.0"
        self.token_url = self.base + "/oauth2/v2.0/token"


@pytest.fixture(scope="session")
def ews_sim(tmp_path_factory):
    s = Simulator(str(tmp_path_factory.mktemp("sim")))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def graph_sim(tmp_path_factory):
    s = GraphSimulator(str(tmp_path_factory.mktemp("graph_sim")))
    yield s
    s.stop()


def pytest_generate_tests(metafunc):
    """The `backend` parameter: which back end the daemon drives ([exchange] api)."""
    if "backend" in metafunc.fixturenames:
        wanted = getattr(metafunc.module, "BACKENDS", ["ews"])
        metafunc.parametrize("backend", [b for b in wanted if b in ENABLED_BACKENDS])


@pytest.fixture
def sim(backend, request):
    return request.getfixturevalue(f"{backend}_sim")


class Database:
    """Test-side access to the CRM database (autocommit)."""

    def __init__(self, cluster):
        self.conn = psycopg2.connect(cluster.conninfo)
        self.conn.autocommit = True

    def query(self, sql, *args):
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None

    def value(self, sql, *args):
        rows = self.query(sql, *args)
        return rows[0][0] if rows else None

    def employee(self, login, name, email, role="staff", time_zone=None):
        return self.value(
            "INSERT INTO contactlog.employee (login, display_name, email, role, time_zone) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id", login, name, email, role, time_zone)

    def log(self, created_by, contact_name="Ada Lovelace", reason="Call back about the offer",
            next_contact_at="2030-03-01 09:00:00+00", **columns):
        columns.update(created_by=created_by, contact_name=contact_name, reason=reason,
                       next_contact_at=next_contact_at)
        names = ", ".join(columns)
        marks = ", ".join(["%s"] * len(columns))
        return self.value(f"INSERT INTO contactlog.contact_log ({names}) VALUES ({marks}) "
                          "RETURNING id", *columns.values())

    def set_attribute(self, name, value):
        self.query("INSERT INTO contactlog.attribute (name, value) VALUES (%s, %s) "
                   "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name, value)

    def synced(self, log_id):
        """True once followupd has finished a pass over the log's latest version
        (or dropped its bookkeeping after a delete)."""
        row = self.query("SELECT NOT dirty, failed FROM contactlog.followupd_log_state "
                         "WHERE contact_log_id = %s", log_id)
        return not row or row[0][0] or row[0][1]

    def wait_synced(self, *log_ids, timeout=10):
        timeout *= SLOW
        for log_id in log_ids:
            wait_for(lambda: self.synced(log_id), timeout=timeout,
                     what=f"followupd to process contact log {log_id}")

    def close(self):
        self.conn.close()


@pytest.fixture
def db(pg, sim):
    d = Database(pg)
    d.query("TRUNCATE contactlog.contact_log, contactlog.employee, contactlog.attribute, "
            "contactlog.outlook_sync, contactlog.outlook_queue, contactlog.outlook_item, "
            "contactlog.outlook_watch, contactlog.outlook_change_log "
            "RESTART IDENTITY CASCADE")
    pg.psql("-f", INSTALL_SQL)   # re-seeds the attributes with their defaults
    sim.reset()
    yield d
    d.close()


class NotifySocket:
    """Stands in for systemd's NOTIFY_SOCKET and keeps what the daemon sends.

    A thread drains it all the time, as systemd does: an unread datagram socket
    fills after a few messages and would make the daemon's sd_notify() fail."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []
        self._lock = threading.Lock()
        self._open = True
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        while self._open:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode(errors="replace"))

    def poll(self):
        # Take what is queued right now too: the reader thread may not have run yet.
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                break
            with self._lock:
                self.messages.append(data.decode(errors="replace"))
        with self._lock:
            return list(self.messages)

    def wait_for(self, text, timeout=10):
        return wait_for(lambda: any(text in m for m in self.poll()), timeout=timeout,
                        what=f"followupd to send {text!r} to NOTIFY_SOCKET")

    def close(self):
        self._open = False
        self._reader.join()
        self.sock.close()


class Daemon:
    def __init__(self, workdir, pg, sim, extra_config="", args=()):
        self.workdir = workdir
        self.password_file = os.path.join(workdir, "ews-password")
        with open(self.password_file, "w") as f:
            f.write(EWS_PASSWORD + "\n")
        os.chmod(self.password_file, stat.S_IRUSR | stat.S_IWUSR)
        self.client_secret_file = os.path.join(workdir, "graph-client-secret")
        with open(self.client_secret_file, "w") as f:
            f.write(GRAPH_CLIENT_SECRET + "\n")
        os.chmod(self.client_secret_file, stat.S_IRUSR | stat.S_IWUSR)
        self.config_path = os.path.join(workdir, "followupd.conf")
        self.write_config(pg, sim, extra_config)
        self.log_path = os.path.join(workdir, "followupd.log")
        self.notify = NotifySocket(os.path.join(workdir, "notify.sock"))
        self.args = list(args)
        self.proc = None

    def write_config(self, pg, sim, extra=""):
        if getattr(sim, "backend", "ews") == "graph":
            with open(self.config_path, "w") as f:
                f.write(f"[database]\nconninfo = {daemon_conninfo(pg)}\n\n"
                        f"[exchange]\napi = graph\ntimeout = 5\n\n"
                        f"[graph]\nbase_url = {sim.url}\n\n"
                        f"[oauth2]\ntoken_url = {sim.token_url}\nclient_id = {GRAPH_CLIENT_ID}\n"
                        f"client_secret_file = {self.client_secret_file}\n{extra}\n")
            return
        with open(self.config_path, "w") as f:
            f.write(f"[database]\nconninfo = {daemon_conninfo(pg)}\n\n"
                    f"[exchange]\nurl = {sim.url}\nauth = basic\nusername = {EWS_USER}\n"
                    f"password_file = {self.password_file}\ntimeout = 5\n{extra}\n")

    extra_env = {}

    def start(self, wait_ready=True):
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, **self.extra_env)
        env.pop("JOURNAL_STREAM", None)
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(WRAPPER + [FOLLOWUPD, "-c", self.config_path, "-d"] + self.args,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.notify.wait_for("READY=1", timeout=10 * SLOW)
        return self

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=15 * SLOW):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("followupd did not stop within %ss" % timeout)
        if self.proc:
            self.log.close()
        return self.proc.returncode if self.proc else None


@pytest.fixture
def daemon_factory(pg, sim, tmp_path):
    started = []

    def make(extra_config="", start=True, args=()):
        d = Daemon(str(tmp_path), pg, sim, extra_config, args)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        code = d.stop()
        d.notify.close()
        if code not in (0, None):
            sys.stderr.write(d.output())
            raise AssertionError(f"followupd exited with status {code}")


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


def restart_holding_the_token(daemon, sim, line):
    """Starts daemon (stopped) while the simulator holds every OAuth2 token request
    30 s; returns once daemon has logged `line` anew and a token request is held."""
    before = daemon.output().count(line)
    sim.fault(mode="delay", when="before_perform", ms=30000, count=-1, ops=["Token"])
    daemon.start()
    wait_for(lambda: daemon.output().count(line) > before
             and any(r["op"] == "Token" and r["fault"] for r in sim.requests()),
             timeout=20, what=f"{line!r} while the simulator holds the token")


def run_ctl(config_path, *args):
    return subprocess.run([FOLLOWUPCTL, "-c", config_path] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
