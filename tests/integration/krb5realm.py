"""A throwaway MIT Kerberos realm for tests: its own KDC (krb5kdc) in a temporary
folder on a free loopback port, with its own krb5.conf and kdc.conf (KRB5_CONFIG,
KRB5_KDC_PROFILE), principals and keytabs made with kadmin.local, tickets with kinit.
Nothing of the system's Kerberos setup (/etc/krb5.conf, /etc/krb5kdc) is read or
written; stop() ends the KDCs it started and removes the folder.

Debian packages: krb5-kdc (krb5kdc, kdb5_util), krb5-admin-server (kadmin.local),
krb5-user (kinit, klist, kdestroy, ktutil) and, for KDCs whose clock is off, faketime.
"""
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile

from pgcluster import free_port, wait_for

REALM = "FOLLOWUPD.TEST"

# binary -> Debian package
TOOLS = {"krb5kdc": "krb5-kdc", "kdb5_util": "krb5-kdc", "kadmin.local": "krb5-admin-server",
         "kinit": "krb5-user", "klist": "krb5-user", "ktutil": "krb5-user",
         "kdestroy": "krb5-user"}
SBIN = ("/usr/sbin", "/sbin")


def tool(name):
    """Path of a Kerberos tool (kadmin.local and krb5kdc live in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_packages(extra=()):
    """Debian packages whose tools are missing, for a skip reason (empty: all there)."""
    wanted = dict(TOOLS, **dict(extra))
    return sorted({package for name, package in wanted.items() if tool(name) is None})


def libfaketime():
    """libfaketime (Debian package faketime), or None. It is preloaded into the KDC
    directly: the faketime command would fork, and stopping it would leave the KDC."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


def _port_open(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Kdc:
    """One krb5kdc process serving the realm's database on a port of its own; its
    krb5.conf (self.krb5_conf) sends clients there."""

    def __init__(self, realm, name, clock_offset=None, port=None):
        self.realm = realm
        self.name = name
        self.port = port or free_port()
        self.clock_offset = clock_offset
        self.kdc_conf = os.path.join(realm.dir, f"{name}-kdc.conf")
        self.krb5_conf = os.path.join(realm.dir, f"{name}-krb5.conf")
        self.log_path = os.path.join(realm.dir, f"{name}.log")
        realm.write_confs(self.krb5_conf, self.kdc_conf, self.port, self.log_path)
        self.proc = None

    def env(self, **more):
        return dict(os.environ, KRB5_CONFIG=self.krb5_conf, KRB5_KDC_PROFILE=self.kdc_conf,
                    **more)

    def start(self):
        env = self.env()
        if self.clock_offset:
            # The KDC's clock is off by clock_offset ("-1h", "+10m"), the rest of the
            # machine's is not.
            env.update(LD_PRELOAD=libfaketime(), FAKETIME=self.clock_offset,
                       FAKETIME_DONT_FAKE_MONOTONIC="1")
        with open(self.log_path + ".out", "w") as out:
            self.proc = subprocess.Popen([tool("krb5kdc"), "-n", "-r", self.realm.name],
                                         stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: self._ready(), timeout=15, what=f"the KDC {self.name} to listen")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"krb5kdc exited with {self.proc.returncode}: {self.output()}")
        return _port_open(self.port)

    def output(self):
        text = ""
        for path in (self.log_path + ".out", self.log_path):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f.read()
        return text

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Realm:
    """The realm: a database, a KDC (self.kdc) and helpers to fill it."""

    def __init__(self, name=REALM, parent=None):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="followupd-krb5-", dir=parent)
        self.database = os.path.join(self.dir, "principal")
        self.stash = os.path.join(self.dir, "stash")
        self.kdcs = []
        self.kdc = None

    # -- configuration ------------------------------------------------------------
    def write_confs(self, krb5_conf, kdc_conf, port, log_path):
        with open(krb5_conf, "w") as f:
            f.write(f"""[libdefaults]
  default_realm = {self.name}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  dns_canonicalize_hostname = false
  rdns = false
  udp_preference_limit = 1
[realms]
  {self.name} = {{
    kdc = 127.0.0.1:{port}
  }}
[domain_realm]
  localhost = {self.name}
""")
        with open(kdc_conf, "w") as f:
            f.write(f"""[kdcdefaults]
  kdc_listen = 127.0.0.1:{port}
  kdc_tcp_listen = 127.0.0.1:{port}
[realms]
  {self.name} = {{
    database_name = {self.database}
    key_stash_file = {self.stash}
    acl_file = {os.path.join(self.dir, "kadm5.acl")}
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
  }}
[logging]
  kdc = FILE:{log_path}
  default = FILE:{log_path}
""")

    @property
    def krb5_conf(self):
        return self.kdc.krb5_conf

    def env(self, **more):
        """Environment for a Kerberos client or tool of this realm."""
        return self.kdc.env(**more)

    # -- life -----------------------------------------------------------------------
    def start(self):
        self.kdc = Kdc(self, "kdc")
        self.run(tool("kdb5_util"), "create", "-s", "-r", self.name, "-P", "master-Key-1")
        self.kdcs.append(self.kdc.start())
        return self

    def start_kdc(self, name, clock_offset=None, port=None):
        """Another KDC on the same database, e.g. with its clock off (libfaketime), on a
        port of its own or on a stopped one's (its clients follow); stopped with the
        realm."""
        kdc = Kdc(self, name, clock_offset, port)
        self.kdcs.append(kdc.start())
        return kdc

    def stop(self):
        for kdc in self.kdcs:
            kdc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- tools ----------------------------------------------------------------------
    def run(self, *args, env=None, stdin=None, check=True):
        result = subprocess.run(list(args), input=stdin, env=env or self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=30)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): "
                               f"{result.stdout}")
        return result

    def kadmin(self, *commands):
        """kadmin.local with these commands on its standard input, one per line; it
        exits 0 even when a command fails, so its output is searched for errors."""
        out = self.run(tool("kadmin.local"), "-r", self.name,
                       stdin="".join(c + "\n" for c in commands)).stdout
        for marker in ("while ", "No such entry", "does not exist", "Usage:"):
            if marker in out:
                raise RuntimeError(f"kadmin.local: {out}")
        return out

    def principal(self, name):
        return name if "@" in name else f"{name}@{self.name}"

    def add_principal(self, name, password=None):
        """A user (with a password) must pre-authenticate, as Active Directory's accounts
        must by default: a wrong key then fails at the KDC (PREAUTH_FAILED)."""
        how = f"+requires_preauth -pw {password}" if password is not None else "-randkey"
        self.kadmin(f"addprinc {how} {self.principal(name)}")

    def change_password(self, name, password):
        self.kadmin(f"cpw -pw {password} {self.principal(name)}")

    def export_keytab(self, path, name):
        """The principal's current keys into a keytab (its password stays valid)."""
        self.kadmin(f"ktadd -norandkey -k {path} {self.principal(name)}")
        os.chmod(path, 0o600)
        return path

    def keytab_from_password(self, path, name, password, kvno=1):
        """A keytab made from a password, as ktpass or ktutil make one, without asking the
        KDC: the keys match the KDC's only if the password does."""
        lines = [f"addent -password -p {self.principal(name)} -k {kvno} -e {enctype}\n"
                 f"{password}"
                 for enctype in ("aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96")]
        self.run(tool("ktutil"), stdin="\n".join(lines + [f"wkt {path}", "quit"]) + "\n")
        os.chmod(path, 0o600)
        return path

    def kinit(self, name, ccache, keytab=None, password=None, env=None, extra=()):
        args = [tool("kinit"), "-c", ccache, *extra]
        if keytab:
            args += ["-k", "-t", keytab]
        args.append(self.principal(name))
        return self.run(*args, env=env, stdin=(password + "\n") if password else None)

    def klist(self, ccache, env=None):
        return self.run(tool("klist"), "-c", ccache, env=env, check=False).stdout
