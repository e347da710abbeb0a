"""Fixtures for the integration tests: a real PostgreSQL cluster, the EWS simulator
on loopback and the real followupd binary.

Paths come from the environment set by `make check` (top_srcdir, top_builddir);
run by hand with e.g.
    top_srcdir=$PWD top_builddir=$PWD/build python3 -m pytest tests/integration
"""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
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


@pytest.fixture(scope="session")
def pg():
    cluster = PgCluster().start()
    try:
        cluster.psql("-f", INSTALL_SQL)
        yield cluster
    except BaseException:
        sys.stderr.write("---- postgres log ----\n" + cluster.log())
        raise
    finally:
        cluster.stop()


class Simulator:
    def __init__(self, workdir):
        self.port_file = os.path.join(workdir, "sim.port")
        self.log_path = os.path.join(workdir, "sim.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PYTHON, SIM, "--port", "0", "--port-file", self.port_file,
             "--users", f"{EWS_USER}:{EWS_PASSWORD}"],
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


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    s = Simulator(str(tmp_path_factory.mktemp("sim")))
    yield s
    s.stop()


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
        self.query("UPDATE contactlog.attribute SET value = %s WHERE name = %s", value, name)

    def synced(self, log_id):
        """True once followupd has finished a pass over the log's latest version
        (or dropped its bookkeeping after a delete)."""
        row = self.query("SELECT version <= synced_version, failed FROM contactlog.outlook_sync "
                         "WHERE contact_log_id = %s", log_id)
        return not row or row[0][0] or row[0][1]

    def wait_synced(self, *log_ids, timeout=10):
        for log_id in log_ids:
            wait_for(lambda: self.synced(log_id), timeout=timeout,
                     what=f"followupd to process contact log {log_id}")

    def close(self):
        self.conn.close()


@pytest.fixture
def db(pg, sim):
    d = Database(pg)
    d.query("TRUNCATE contactlog.contact_log, contactlog.employee, contactlog.attribute, "
            "contactlog.outlook_sync, contactlog.outlook_item RESTART IDENTITY CASCADE")
    pg.psql("-f", INSTALL_SQL)   # re-seeds the attributes with their defaults
    sim.reset()
    yield d
    d.close()


class NotifySocket:
    """Stands in for systemd's NOTIFY_SOCKET and keeps what the daemon sends."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages = []

    def poll(self):
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return self.messages

    def wait_for(self, text, timeout=10):
        return wait_for(lambda: any(text in m for m in self.poll()), timeout=timeout,
                        what=f"followupd to send {text!r} to NOTIFY_SOCKET")

    def close(self):
        self.sock.close()


class Daemon:
    def __init__(self, workdir, pg, sim, extra_config="", args=()):
        self.workdir = workdir
        self.password_file = os.path.join(workdir, "ews-password")
        with open(self.password_file, "w") as f:
            f.write(EWS_PASSWORD + "\n")
        os.chmod(self.password_file, stat.S_IRUSR | stat.S_IWUSR)
        self.config_path = os.path.join(workdir, "followupd.conf")
        self.write_config(pg, sim, extra_config)
        self.log_path = os.path.join(workdir, "followupd.log")
        self.notify = NotifySocket(os.path.join(workdir, "notify.sock"))
        self.args = list(args)
        self.proc = None

    def write_config(self, pg, sim, extra=""):
        with open(self.config_path, "w") as f:
            f.write(f"[database]\nconninfo = {pg.conninfo}\n\n"
                    f"[exchange]\nurl = {sim.url}\nauth = basic\nusername = {EWS_USER}\n"
                    f"password_file = {self.password_file}\ntimeout = 5\n{extra}\n")

    def start(self, wait_ready=True):
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        env.pop("JOURNAL_STREAM", None)
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([FOLLOWUPD, "-c", self.config_path, "-d"] + self.args,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.notify.wait_for("READY=1")
        return self

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=15):
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


def run_ctl(config_path, *args):
    return subprocess.run([FOLLOWUPCTL, "-c", config_path] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
