"""auth = negotiate and auth = ntlm against real acceptors (issue 12, item 14).

negotiate: an MIT Kerberos KDC in a throwaway realm (krb5realm.py) issues the daemon's
tickets; the EWS simulator checks them with MIT's GSSAPI acceptor and the service's
keytab (ews_sim.py --auth negotiate). The daemon gets its credentials the way the
operator guide sets them up: a client keytab (KRB5_CLIENT_KTNAME) or a ticket cache
(KRB5CCNAME), with the realm's own krb5.conf (KRB5_CONFIG).

ntlm: libcurl's own NTLM (not GSSAPI) against Samba's NTLMSSP server (ntlm_auth, from
winbind) and, where it is installed, gss-ntlmssp (ews_sim.py --auth ntlm; see "Windows
authentication" there for why gss-ntlmssp needs libcurl's messages re-framed, and
scripts/setup for why it is not installed by default).

For each failure (missing keytab or ticket, wrong password, clock skew, unknown SPN)
delivery pauses as a back-end state (STATUS= "waiting for Exchange to accept the
service account"), no log is parked or charged an attempt, `followupctl test-connection`
exits 1 naming the stage ("authentication"), and where the fault can be fixed without
a restart delivery resumes by itself.
"""
import os
import shutil
import subprocess

import pytest

from conftest import EWS_PASSWORD, FOLLOWUPCTL, PYTHON, SIM, SLOW, Simulator, daemon_conninfo
from krb5realm import REALM, Realm, libfaketime, missing_packages, tool
from pgcluster import wait_for

MAILBOX = "alice@example.org"
SERVICE = "svc-followupd"
SERVICE_PRINCIPAL = f"{SERVICE}@{REALM}"
HTTP_PRINCIPAL = f"HTTP/localhost@{REALM}"
KRB5_MECH = "1.2.840.113554.1.2.2"
NTLM_DOMAIN = "EXAMPLE"
PASSWORD = EWS_PASSWORD            # the conftest Daemon's password file holds it
FAST = ("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_attempts = 100\n"
        "settle_ms = 300\n")
PAUSED = "waiting for Exchange to accept the service account"
# How followupctl test-connection begins for any refused logon (followupctl.c,
# explain_probe); what follows says why (ews_refused_credentials_reason): Kerberos's
# own words when it gave no ticket (libcurl's GSSAPI text), the clocks and the SPN's
# keytab when Exchange refused the ticket, the password file for basic and ntlm.
CTL_AUTH_FAILURE = ("followupctl: authentication: Exchange refused the credentials "
                    "(HTTP 401)")
NO_TICKET = CTL_AUTH_FAILURE + ": Kerberos gave no ticket (gss_init_sec_context() failed: "
GSS_NTLMSSP_CONF = "/etc/gss/mech.d/mech.ntlmssp.conf"


def have_python_gssapi():
    return subprocess.run([PYTHON, "-c", "import gssapi"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


class AuthSim(Simulator):
    """ews_sim.py with --auth negotiate or ntlm, in its own environment (the realm's
    krb5.conf, its own replay cache); the control API stays on 127.0.0.1, EWS is
    addressed by `host` (Kerberos needs the name the SPN is registered for)."""

    def __init__(self, workdir, args, env, host="127.0.0.1"):
        self.port_file = os.path.join(workdir, "sim.port")
        self.log_path = os.path.join(workdir, "sim.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PYTHON, SIM, "--port", "0", "--port-file",
                                      self.port_file] + list(args),
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = int(wait_for(self._read_port, timeout=15,
                                 what="the EWS simulator to listen"))
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"http://{host}:{self.port}/EWS/Exchange.asmx"

    def soap(self, op=None):
        """EWS requests (the control API is not logged), optionally of one operation."""
        return [r for r in self.requests() if op is None or r["op"] == op]


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def realm(tmp_path_factory):
    missing = missing_packages()
    if missing:
        pytest.skip(f"Kerberos tools missing: apt-get install {' '.join(missing)}")
    if not have_python_gssapi():
        pytest.skip("python3-gssapi is not installed (apt-get install python3-gssapi)")
    r = Realm(parent=str(tmp_path_factory.mktemp("krb5"))).start()
    try:
        r.add_principal(SERVICE, PASSWORD)
        r.add_principal("HTTP/localhost")
        r.client_keytab = r.export_keytab(os.path.join(r.dir, "client.keytab"), SERVICE)
        r.http_keytab = r.export_keytab(os.path.join(r.dir, "http.keytab"), "HTTP/localhost")
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def negotiate_sim(realm, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("negotiate_sim"))
    s = AuthSim(workdir, ["--auth", "negotiate", "--keytab", realm.http_keytab,
                          "--principal", HTTP_PRINCIPAL],
                realm.env(KRB5RCACHEDIR=workdir), host="localhost")
    yield s
    s.stop()


NTLM_ACCEPTORS = {
    "samba": lambda: None if tool("ntlm_auth") else "ntlm_auth missing (apt-get install winbind)",
    "gss-ntlmssp": lambda: (None if os.path.exists(GSS_NTLMSSP_CONF) and have_python_gssapi()
                            else "gss-ntlmssp is not installed; scripts/setup leaves it out on purpose: its /etc/gss/mech.d entry loads it into every GSSAPI user, followupd's libpq included, and valgrind then reports MIT's plugin loader leaking"),
}


@pytest.fixture(scope="module", params=sorted(NTLM_ACCEPTORS))
def ntlm_sim(request, tmp_path_factory):
    why_not = NTLM_ACCEPTORS[request.param]()
    if why_not:
        pytest.skip(f"NTLM acceptor {request.param}: {why_not}")
    workdir = str(tmp_path_factory.mktemp(f"ntlm_sim_{request.param}"))
    users = os.path.join(workdir, "ntlm-users")
    with open(users, "w") as f:
        f.write(f"{NTLM_DOMAIN}:{SERVICE}:{PASSWORD}\n")
    os.chmod(users, 0o600)
    s = AuthSim(workdir, ["--auth", "ntlm", "--ntlm-users", users,
                          "--ntlm-acceptor", request.param], dict(os.environ))
    s.acceptor = request.param
    yield s
    s.stop()


# With Kerberos credentials in its environment libpq tries GSSAPI encryption with
# PostgreSQL first (gssencmode=prefer); the test cluster has no postgres/ principal, so
# libpq falls back to a new socket (test_database_connects_with_kerberos_credentials
# covers that: it once left the daemon watching the closed one). The other tests
# save the round trip, as the operator guide suggests.
NO_GSSENC = " gssencmode=disable"


def start_daemon(daemon_factory, pg, url, auth_lines, env=None, password=None,
                 conninfo_extra=NO_GSSENC):
    """followupd against url with these [exchange] lines and this environment
    (password: what its password file holds instead of the right one)."""
    d = daemon_factory(start=False)
    if password is not None:
        with open(d.password_file, "w") as f:
            f.write(password + "\n")
    with open(d.config_path, "w") as f:
        f.write(f"[database]\nconninfo = {daemon_conninfo(pg)}{conninfo_extra}\n\n"
                f"[exchange]\nurl = {url}\n"
                f"{auth_lines.format(password_file=d.password_file)}timeout = 5\n\n{FAST}")
    d.extra_env = dict(env or {})
    return d.start()


def ctl(d, *args):
    """followupctl with the daemon's configuration and environment."""
    return subprocess.run([FOLLOWUPCTL, "-c", d.config_path] + list(args),
                          env=dict(os.environ, **d.extra_env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)


def kerberos_env(realm, tmp_path, keytab, krb5_conf=None, ccache=None):
    """What the unit's drop-in gives the daemon: the client keytab, a ticket cache of
    its own (here in the test's folder), the realm's krb5.conf."""
    return {"KRB5_CONFIG": krb5_conf or realm.krb5_conf,
            "KRB5_CLIENT_KTNAME": keytab,
            "KRB5CCNAME": "FILE:" + (ccache or str(tmp_path / "daemon.ccache")),
            "KRB5_TRACE": str(tmp_path / "krb5-trace.log")}


def log_state(db, log_id):
    return db.query("SELECT failed, attempts FROM contactlog.followupd_log_state "
                    "WHERE contact_log_id = %s", log_id)[0]


def assert_paused_not_parked(d, db, log_id):
    """The back-end state: STATUS= says so; the log is neither parked nor charged."""
    d.notify.wait_for(PAUSED, timeout=15 * SLOW)
    assert log_state(db, log_id) == (False, 0)
    assert db.value("SELECT count(*) FROM contactlog.followupd_log_state WHERE failed") == 0


def assert_ctl_names_auth(d):
    result = ctl(d, "test-connection", MAILBOX)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(CTL_AUTH_FAILURE), result.stderr
    return result.stderr


def wait_delivered(db, sim, log_id, count=1):
    db.wait_synced(log_id, timeout=45)
    assert log_state(db, log_id) == (False, 0)
    assert len(sim.mailbox(MAILBOX)) == count


def reschedule(db, sim, log_id):
    """A later change of the log: its item is updated, over whatever connection the
    daemon has (an authenticated keep-alive connection may carry it without a token)."""
    db.query("UPDATE contactlog.contact_log SET next_contact_at = '2030-04-01 10:00:00+00' "
             "WHERE id = %s", log_id)
    wait_for(lambda: any(i["start"] == "2030-04-01T10:00:00Z" for i in sim.mailbox(MAILBOX)),
             timeout=30 * SLOW, what="the rescheduled appointment")
    db.wait_synced(log_id, timeout=30)
    assert log_state(db, log_id) == (False, 0)


def trace(tmp_path):
    path = tmp_path / "krb5-trace.log"
    return path.read_text(errors="replace") if path.exists() else "(no KRB5_TRACE)"


# ---------------------------------------------------------------------------
# auth = negotiate (Kerberos)
# ---------------------------------------------------------------------------

class TestNegotiate:
    AUTH = "auth = negotiate\n"

    @pytest.fixture
    def sim(self, negotiate_sim):
        return negotiate_sim

    @pytest.mark.parametrize("source", ["keytab", "ticket cache"])
    def test_delivers(self, db, sim, realm, daemon_factory, pg, tmp_path, source):
        """A client keytab (the daemon fetches its own tickets from the KDC), or a ticket
        cache filled by kinit beforehand: the follow-up is created, as the service
        principal, through Kerberos; test-connection says OK."""
        ccache = str(tmp_path / "daemon.ccache")
        keytab = realm.client_keytab
        if source == "ticket cache":
            realm.kinit(SERVICE, ccache, password=PASSWORD)
            keytab = str(tmp_path / "no-such.keytab")      # only the cache can help
        alice = db.employee("alice", "Alice Archer", MAILBOX)
        d = start_daemon(daemon_factory, pg, sim.url, self.AUTH,
                         kerberos_env(realm, tmp_path, keytab, ccache=ccache))
        log_id = db.log(alice, reason="call back, Kerberos")
        wait_delivered(db, sim, log_id)
        reschedule(db, sim, log_id)

        creates = sim.soap("CreateItem")
        assert creates and all(r["http_status"] == 200 for r in creates)
        assert all(r["auth_user"] == SERVICE_PRINCIPAL for r in creates), creates
        logons = [r for r in sim.soap() if r["auth_result"] == "accepted"]
        assert logons and all(r["auth_scheme"] == "Negotiate" and r["auth_mech"] == KRB5_MECH
                              for r in logons)
        # The service ticket came from this realm's KDC, into the daemon's own cache.
        assert f"{SERVICE_PRINCIPAL} for {HTTP_PRINCIPAL}" in realm.kdc.output()
        assert HTTP_PRINCIPAL in realm.klist(ccache)

        result = ctl(d, "test-connection", MAILBOX)
        assert result.returncode == 0, result.stderr + trace(tmp_path)
        assert result.stdout.startswith("OK: ")
        probes = sim.soap("GetFolder")
        assert probes[-1]["auth_user"] == SERVICE_PRINCIPAL and probes[-1]["mailbox"] == MAILBOX

    def test_missing_keytab_pauses_then_resumes(self, db, sim, realm, daemon_factory, pg,
                                                tmp_path):
        """KRB5_CLIENT_KTNAME names a keytab that is not there and the cache is empty:
        libcurl has no Kerberos credentials, sends no token, and Exchange's 401 stands.
        Installing the keytab is enough: delivery resumes without a restart."""
        keytab = str(tmp_path / "followupd.keytab")
        alice = db.employee("alice", "Alice Archer", MAILBOX)
        d = start_daemon(daemon_factory, pg, sim.url, self.AUTH,
                         kerberos_env(realm, tmp_path, keytab))
        log_id = db.log(alice, reason="waits for its keytab")
        assert_paused_not_parked(d, db, log_id)
        refused = [r for r in sim.soap() if r["http_status"] == 401]
        # The client offered nothing: challenged, never a token refused.
        assert refused and all(r["auth_result"] == "challenged" and r["auth_scheme"] is None
                               for r in refused)
        assert not sim.soap("CreateItem")      # nothing got past authentication
        said = assert_ctl_names_auth(d)
        assert said.startswith(NO_TICKET) and "No credentials were supplied" in said, said
        assert "No credentials were supplied" in d.output()   # the journal says it too

        shutil.copy(realm.client_keytab, keytab)
        os.chmod(keytab, 0o600)
        wait_delivered(db, sim, log_id)
        assert sim.soap("CreateItem")[-1]["auth_user"] == SERVICE_PRINCIPAL
        wait_for(lambda: PAUSED not in [m for m in d.notify.poll() if "STATUS=" in m][-1],
                 timeout=10, what="STATUS= to drop the credentials problem")

    def test_wrong_password_pauses_then_resumes(self, db, sim, realm, daemon_factory, pg,
                                                tmp_path):
        """A keytab made from a wrong password (ktpass/ktutil with a typo, or the
        account's password changed since): the KDC refuses the pre-authentication, so no
        ticket, no token, 401. A correct keytab in its place: delivery resumes."""
        keytab = realm.keytab_from_password(str(tmp_path / "followupd.keytab"), SERVICE,
                                            "not-the-password")
        alice = db.employee("alice", "Alice Archer", MAILBOX)
        d = start_daemon(daemon_factory, pg, sim.url, self.AUTH,
                         kerberos_env(realm, tmp_path, keytab))
        log_id = db.log(alice, reason="waits for the right password")
        assert_paused_not_parked(d, db, log_id)
        assert f"PREAUTH_FAILED: {SERVICE_PRINCIPAL}" in realm.kdc.output()
        assert not sim.soap("CreateItem")
        said = assert_ctl_names_auth(d)
        assert said.startswith(NO_TICKET) and "Preauthentication failed" in said, said

        realm.keytab_from_password(str(tmp_path / "good.keytab"), SERVICE, PASSWORD)
        os.replace(tmp_path / "good.keytab", keytab)
        wait_delivered(db, sim, log_id)

    def test_clock_skew_pauses_until_the_cache_is_renewed(self, db, sim, realm,
                                                          daemon_factory, pg, tmp_path):
        """The KDC's clock is an hour behind Exchange's (a second KDC on the same
        database with libfaketime; the daemon's krb5.conf names it). The daemon's
        tickets and authenticators carry the KDC's time (MIT follows the KDC's clock
        and keeps the offset in the ticket cache), so the acceptor refuses them:
        "Clock skew too great". Once the KDC's clock is right, the cached tickets and
        offset still fail; after kdestroy delivery resumes without a restart."""
        if libfaketime() is None:
            pytest.skip("libfaketime is not installed (apt-get install faketime)")
        skewed = realm.start_kdc("behind", clock_offset="-1h")
        fixed = None
        try:
            alice = db.employee("alice", "Alice Archer", MAILBOX)
            ccache = str(tmp_path / "daemon.ccache")
            d = start_daemon(daemon_factory, pg, sim.url, self.AUTH,
                             kerberos_env(realm, tmp_path, realm.client_keytab,
                                          krb5_conf=skewed.krb5_conf, ccache=ccache))
            log_id = db.log(alice, reason="waits for the clocks")
            assert_paused_not_parked(d, db, log_id)
            refused = [r for r in sim.soap() if r["auth_result"] == "refused"]
            assert refused, sim.soap()
            assert all("Clock skew too great" in r["auth_error"] for r in refused), refused
            assert not sim.soap("CreateItem")
            said = assert_ctl_names_auth(d)
            assert "did not accept the Kerberos ticket: check that the clocks" in said, said

            # The KDC's clock is put right (a KDC in real time on the same port).
            skewed.stop()
            fixed = realm.start_kdc("fixed", port=skewed.port)
            seen = len(sim.soap())
            wait_for(lambda: [r for r in sim.soap()[seen:] if r["auth_result"] == "refused"],
                     timeout=30 * SLOW, what="a retry with the cached tickets")
            assert log_state(db, log_id) == (False, 0)
            realm.run(tool("kdestroy"), "-c", ccache, env=realm.env())
            wait_delivered(db, sim, log_id)
            assert f"{SERVICE_PRINCIPAL} for {HTTP_PRINCIPAL}" in fixed.output()
        finally:
            skewed.stop()
            if fixed:
                fixed.stop()

    def test_unknown_spn_pauses(self, db, sim, realm, daemon_factory, pg, tmp_path):
        """url names the server by address: the client asks the KDC for HTTP/127.0.0.1,
        which no account has, gets no ticket and sends no token: 401."""
        alice = db.employee("alice", "Alice Archer", MAILBOX)
        by_address = sim.url.replace("//localhost:", "//127.0.0.1:")
        d = start_daemon(daemon_factory, pg, by_address, self.AUTH,
                         kerberos_env(realm, tmp_path, realm.client_keytab))
        log_id = db.log(alice, reason="waits for its SPN")
        assert_paused_not_parked(d, db, log_id)
        assert (f"{SERVICE_PRINCIPAL} for HTTP/127.0.0.1@{REALM}, "
                "Server not found in Kerberos database") in realm.kdc.output()
        assert all(r["auth_result"] == "challenged" for r in sim.soap()
                   if r["http_status"] == 401)
        said = assert_ctl_names_auth(d)
        assert said.startswith(NO_TICKET) and (f"Server HTTP/127.0.0.1@{REALM} not found in "
                                               "Kerberos database") in said, said


    def test_database_connects_with_kerberos_credentials(self, db, sim, realm,
                                                         daemon_factory, pg, tmp_path):
        """The conninfo as an operator writes it (no gssencmode): the daemon's Kerberos
        credentials must not keep it from its database."""
        d = start_daemon(daemon_factory, pg, sim.url, self.AUTH,
                         kerberos_env(realm, tmp_path, realm.client_keytab),
                         conninfo_extra="")
        outcome = wait_for(lambda: ("connected" if "connected to the database" in d.output()
                                    else "refused" if "cannot connect to the database"
                                    in d.output() else None),
                           timeout=15 * SLOW, what="the daemon to connect or give up")
        assert outcome == "connected", d.output()


# ---------------------------------------------------------------------------
# auth = ntlm
# ---------------------------------------------------------------------------

class TestNtlm:
    AUTH = (f"auth = ntlm\nusername = {NTLM_DOMAIN}\\{SERVICE}\n"
            "password_file = {password_file}\n")

    @pytest.fixture
    def sim(self, ntlm_sim):
        return ntlm_sim

    def test_delivers(self, db, sim, daemon_factory, pg):
        """libcurl's NTLM handshake (NEGOTIATE, 401 with the CHALLENGE, AUTHENTICATE on
        the same connection) passes a real acceptor with an NTLMv2 response, for every
        connection the daemon opens; test-connection says OK."""
        # Three mailboxes: three CreateItem requests (one mailbox's would be batched).
        mailboxes = [MAILBOX, "bob@example.org", "carol@example.org"]
        people = [db.employee(m.split("@")[0], m.split("@")[0].title(), m) for m in mailboxes]
        d = start_daemon(daemon_factory, pg, sim.url, self.AUTH)
        ids = [db.log(person, reason="call back, NTLM") for person in people]
        for log_id in ids:
            db.wait_synced(log_id, timeout=30)
            assert log_state(db, log_id) == (False, 0)
        assert all(len(sim.mailbox(m)) == 1 for m in mailboxes)
        reschedule(db, sim, ids[0])

        soap = sim.soap()
        creates = [r for r in soap if r["op"] == "CreateItem"]
        assert len(creates) >= 3 and all(r["http_status"] == 200 for r in creates)
        user = f"{NTLM_DOMAIN}\\{SERVICE}".lower()
        assert all((r["auth_user"] or "").lower() == user for r in creates), \
            [r["auth_user"] for r in creates]
        logons = [r for r in soap if r["auth_result"] == "accepted"]
        assert logons and all(r["auth_scheme"] == "NTLM" and r["ntlm_response"] == "NTLMv2"
                              for r in logons)
        # Each logon finished the handshake its connection began with a 401 CHALLENGE.
        for logon in logons:
            before = [r for r in soap if r["connection"] == logon["connection"]
                      and r["connection_seq"] == logon["connection_seq"] - 1]
            assert before and before[0]["auth_result"] == "challenged" \
                and before[0]["http_status"] == 401, (logon, soap)
        assert not [r for r in soap if r["auth_result"] == "refused"]

        result = ctl(d, "test-connection", MAILBOX)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK: ")

    def test_wrong_password_pauses_then_resumes(self, db, sim, daemon_factory, pg):
        """The acceptor refuses the NTLMv2 response: delivery pauses; the right password
        in the password file is read again at the next 401 and delivery resumes."""
        alice = db.employee("alice", "Alice Archer", MAILBOX)
        d = start_daemon(daemon_factory, pg, sim.url, self.AUTH, password="not-the-password")
        log_id = db.log(alice, reason="waits for the right password")
        assert_paused_not_parked(d, db, log_id)
        refused = [r for r in sim.soap() if r["auth_result"] == "refused"]
        assert refused and all(r["auth_scheme"] == "NTLM" and r["auth_error"]
                               for r in refused), sim.soap()
        assert not sim.soap("CreateItem")
        stderr = assert_ctl_names_auth(d)
        assert "not-the-password" not in stderr

        with open(d.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        wait_delivered(db, sim, log_id)
