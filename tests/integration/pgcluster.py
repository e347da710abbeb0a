"""A throwaway PostgreSQL cluster for tests, the demo and benchmarks.

initdb into a temporary directory, fsync off, a free loopback port, the socket in
the same directory; stopped and removed by stop(). PostgreSQL refuses to run as
root, so as root the server runs as the 'postgres' system user.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time


def _pg_bindir():
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, dbname="crm"):
        self.bindir = _pg_bindir()
        self.dbname = dbname
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="followupd-pg-")
        self.datadir = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self._as_user = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_user = "postgres"
        self.superuser = "postgres"

    def _run(self, args, **kw):
        if self._as_user:
            args = ["runuser", "-u", self._as_user, "--"] + args
        return subprocess.run(args, check=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, **kw)

    def start(self):
        self._run([os.path.join(self.bindir, "initdb"), "--nosync", "-A", "trust",
                   "-U", self.superuser, "-E", "UTF8", "--locale=C.UTF-8", "-D", self.datadir])
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as conf:
            conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.dir}'\n"
                       "log_min_messages = warning\n")
        self.pg_ctl("start")
        self._run([os.path.join(self.bindir, "createdb"), "-h", self.dir, "-p", str(self.port),
                   "-U", self.superuser, self.dbname])
        return self

    def pg_ctl(self, action, *extra):
        args = [os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-w", "-t", "60"]
        if action in ("start", "restart"):
            args += ["-l", self.logfile]
        if action in ("stop", "restart"):
            args += ["-m", "fast"]
        self._run(args + [action] + list(extra))

    def stop(self):
        try:
            if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
                self.pg_ctl("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    @property
    def conninfo(self):
        return self.conninfo_as(self.superuser)

    def conninfo_as(self, user):
        """The same database as another role (trust authentication: no password)."""
        return f"host=127.0.0.1 port={self.port} dbname={self.dbname} user={user}"

    def psql(self, *args, input=None):
        return subprocess.run([os.path.join(self.bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                               self.conninfo] + list(args), check=True, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls predicate() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
