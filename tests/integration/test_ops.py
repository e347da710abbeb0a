"""What an operator touches: followupctl, reload, sd_notify, OAuth2 for EWS."""
import json
import os
import pwd
import time
import signal
import socket
import stat

import pytest

from conftest import (DAEMON_LOGIN, Daemon, Database, EWS_PASSWORD, FOLLOWUPCTL, GRAPH_CLIENT_ID,
                      GRAPH_CLIENT_SECRET, Simulator, restart_holding_the_token, run_ctl)
from pgcluster import PgCluster, free_port, wait_for

MAILBOX = "alice@example.org"


@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


# ---- followupctl ------------------------------------------------------------

def test_usage_errors_exit_2(daemon):
    for args in ([], ["frobnicate"], ["retry"], ["resync", "x"], ["status", "--yaml"],
                 ["attr", "a", "b", "c"]):
        result = run_ctl(daemon.config_path, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr


def test_status_json_and_text(db, sim, daemon, alice):
    log_id = db.log(alice)
    db.wait_synced(log_id)
    result = run_ctl(daemon.config_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["pending"] == 0 and status["failed"] == 0 and status["delivered"] == 1
    text = run_ctl(daemon.config_path, "status")
    assert text.returncode == 0 and "items in Outlook:    1" in text.stdout


def test_status_reports_attribute_problems(db, daemon):
    db.set_attribute("AddToTasks", "maybe")
    status = json.loads(run_ctl(daemon.config_path, "status", "--json").stdout)
    assert any("AddToTasks" in p for p in status["attribute_problems"])


def admin_config(pg, daemon, tmp_path):
    """The daemon's configuration, connecting as a member of contactlog_admin (the
    operator guide's "configuration for administration")."""
    pg.psql("-c", "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles "
                  "WHERE rolname = 'followupd_admin_test') THEN "
                  "CREATE ROLE followupd_admin_test LOGIN IN ROLE contactlog_admin; END IF; END $$")
    with open(daemon.config_path) as f:
        text = f.read()
    path = tmp_path / "admin.conf"
    path.write_text(text.replace(pg.conninfo_as(DAEMON_LOGIN), pg.conninfo_as("followupd_admin_test")))
    return str(path)


def test_attr_list_show_set_and_refuse(pg, db, daemon, tmp_path):
    listing = run_ctl(daemon.config_path, "attr")
    assert listing.returncode == 0
    for name in ("AddToCalendar", "AddToTasks", "LinkUrlTemplate", "SyncUpdates"):
        assert name in listing.stdout
    shown = run_ctl(daemon.config_path, "attr", "AppointmentDurationInMinutes")
    assert shown.returncode == 0 and shown.stdout.strip() == "30"
    # The daemon's role may not write attributes, and followupctl says which role may.
    denied = run_ctl(daemon.config_path, "attr", "AppointmentDurationInMinutes", "45")
    assert denied.returncode == 1
    assert "permission denied" in denied.stderr and "contactlog_admin" in denied.stderr
    assert DAEMON_LOGIN in denied.stderr
    admin = admin_config(pg, daemon, tmp_path)
    changed = run_ctl(admin, "attr", "AppointmentDurationInMinutes", "45")
    assert changed.returncode == 0, changed.stderr
    assert db.value("SELECT value FROM contactlog.attribute "
                    "WHERE name = 'AppointmentDurationInMinutes'") == "45"
    for name, bad in (("AddToCalendar", "yes"), ("AppointmentDurationInMinutes", "-5"),
                      ("LinkUrlTemplate", "https://crm/no-placeholder")):
        refused = run_ctl(admin, "attr", name, bad)
        assert refused.returncode == 1, (name, bad)
        assert name in refused.stderr
    # A refused value is never stored.
    assert db.value("SELECT value FROM contactlog.attribute WHERE name = 'AddToCalendar'") == "1"
    unknown = run_ctl(admin, "attr", "NoSuchThing", "1")
    assert unknown.returncode == 1 and "unknown attribute" in unknown.stderr


def test_resync_recreates_an_item_deleted_in_outlook(db, sim, daemon, alice):
    import urllib.parse
    log_id = db.log(alice)
    db.wait_synced(log_id)
    item = sim.mailbox(MAILBOX)[0]
    sim.call("DELETE", "/_sim/items/" + urllib.parse.quote(item["id"], safe=""))
    result = run_ctl(daemon.config_path, "resync", str(log_id))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(sim.mailbox(MAILBOX)) == 1, what="the item made again")
    assert run_ctl(daemon.config_path, "resync", "999999").returncode == 1


def test_retry_of_a_log_that_is_not_parked_fails(db, daemon, alice):
    log_id = db.log(alice)
    db.wait_synced(log_id)
    result = run_ctl(daemon.config_path, "retry", str(log_id))
    assert result.returncode == 1 and "not parked" in result.stderr


def test_migrate_installs_and_upgrades_idempotently(tmp_path):
    cluster = PgCluster().start()
    try:
        config = tmp_path / "ctl.conf"
        config.write_text(f"[database]\nconninfo = {cluster.conninfo}\n\n"
                          "[exchange]\nurl = http://127.0.0.1:1/EWS/Exchange.asmx\n")
        first = run_ctl(str(config), "migrate")
        assert first.returncode == 0, first.stderr
        assert "schema contactlog is at version" in first.stdout
        again = run_ctl(str(config), "migrate")
        assert again.returncode == 0 and again.stdout == first.stdout
        db = Database(cluster)
        assert db.value("SELECT count(*) FROM contactlog.attribute") == 7
        db.close()
    finally:
        cluster.stop()


def test_ctl_without_database_fails_with_one_line(tmp_path):
    config = tmp_path / "ctl.conf"
    config.write_text(f"[database]\nconninfo = host=127.0.0.1 port={free_port()} "
                      "dbname=x connect_timeout=2\n")
    result = run_ctl(str(config), "status")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot connect to the database" in result.stderr


# ---- test-connection ------------------------------------------------------------

def test_connection_ok(db, sim, daemon):
    result = run_ctl(daemon.config_path, "test-connection", MAILBOX)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK:")
    probes = [r for r in sim.requests() if r["op"] == "GetFolder"]
    assert len(probes) == 1 and probes[0]["valid"] and probes[0]["mailbox"] == MAILBOX


def test_connection_impersonation_denied(db, sim, daemon):
    sim.fault(mode="response_code", code="ErrorImpersonateUserDenied", ops=["GetFolder"])
    result = run_ctl(daemon.config_path, "test-connection", MAILBOX)
    assert result.returncode == 1
    assert "impersonation" in result.stderr and "ApplicationImpersonation" in result.stderr


def test_connection_wrong_password(db, sim, daemon):
    with open(daemon.password_file, "w") as f:
        f.write("not-the-password\n")
    result = run_ctl(daemon.config_path, "test-connection", MAILBOX)
    assert result.returncode == 1 and "authentication" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_connection_refused_and_tls(db, sim, daemon, tmp_path, pg):
    closed = free_port()
    config = tmp_path / "closed.conf"
    config.write_text(open(daemon.config_path).read().replace(sim.url,
                      f"http://127.0.0.1:{closed}/EWS/Exchange.asmx"))
    result = run_ctl(str(config), "test-connection", MAILBOX)
    assert result.returncode == 1 and "cannot connect" in result.stderr
    # The simulator speaks plain HTTP: a TLS handshake with it fails.
    config.write_text(open(daemon.config_path).read().replace("http://", "https://"))
    result = run_ctl(str(config), "test-connection", MAILBOX)
    assert result.returncode == 1 and "TLS" in result.stderr


# ---- reload and sd_notify -------------------------------------------------------

def test_notify_protocol_ready_status_watchdog_reloading_stopping(db, sim, daemon_factory, alice):
    d = daemon_factory(start=False)
    d.extra_env = {"WATCHDOG_USEC": "400000"}
    d.start()
    d.notify.wait_for("WATCHDOG=1", timeout=5)
    # STATUS= carries the queue's depth from the database.
    d.notify.wait_for("queued, 0 failed", timeout=10)
    log_id = db.log(alice)
    db.wait_synced(log_id)
    d.proc.send_signal(signal.SIGHUP)
    d.notify.wait_for("RELOADING=1")
    wait_for(lambda: sum("READY=1" in m for m in d.notify.poll()) >= 2,
             what="READY=1 after the reload")
    reloading = next(m for m in d.notify.poll() if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reloading
    assert d.stop() == 0
    assert any("STOPPING=1" in m for m in d.notify.poll())


def test_reload_applies_a_good_file_and_keeps_running_on_a_bad_one(db, sim, daemon_factory,
                                                                   alice):
    d = daemon_factory()
    with open(d.config_path, "a") as f:
        f.write("\n[delivery]\nconcurrency = 3\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.output(), what="the reload")
    log_id = db.log(alice, reason="after a good reload")
    db.wait_synced(log_id)

    good = open(d.config_path).read()
    with open(d.config_path, "w") as f:
        f.write(good + "\n[delivery\nbogus line\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.output(), what="the refused reload")
    assert d.proc.poll() is None, "a bad reload must never stop the daemon"
    log_id = db.log(alice, reason="after a bad reload")
    db.wait_synced(log_id)
    assert len(sim.mailbox(MAILBOX)) == 2


def test_check_and_start_refuse_a_malformed_file(tmp_path):
    from conftest import FOLLOWUPD
    import subprocess
    bad = tmp_path / "bad.conf"
    bad.write_text("[exchange]\nurl = https://mail.example.org/EWS/Exchange.asmx\nfrobs = 1\n")
    for args in (["--check", "-c", str(bad)], ["-c", str(bad)]):
        result = subprocess.run([FOLLOWUPD] + args, capture_output=True, text=True, timeout=10)
        assert result.returncode == 1
        assert f"{bad}:3" in result.stderr and "frobs" in result.stderr


# ---- OAuth2 for EWS ---------------------------------------------------------------

def ews_oauth2_daemon(pg, tmp_path):
    """An EWS simulator that takes OAuth2 bearer tokens, and a daemon set up for it."""
    sim = Simulator(str(tmp_path), ["--oauth-client", f"{GRAPH_CLIENT_ID}:{GRAPH_CLIENT_SECRET}"])
    d = Daemon(str(tmp_path), pg, sim)
    with open(d.config_path, "w") as f:
        f.write(f"[database]\nconninfo = {pg.conninfo_as(DAEMON_LOGIN)}\n\n"
                f"[exchange]\nurl = {sim.url}\nauth = oauth2\ntimeout = 5\n\n[oauth2]\n"
                f"token_url = {sim.base}/tenant/oauth2/v2.0/token\n"
                f"client_id = {GRAPH_CLIENT_ID}\n"
                f"client_secret_file = {d.client_secret_file}\n")
    return sim, d


def test_ews_oauth2_token_fetched_cached_and_refreshed_on_401(pg, db, tmp_path, alice):
    sim, d = ews_oauth2_daemon(pg, tmp_path)
    try:
        d.start()
        first = db.log(alice, reason="first")
        second = db.log(alice, reason="second")
        db.wait_synced(first, second)
        tokens = [r for r in sim.requests() if r["op"] == "Token"]
        assert len(tokens) == 1, "the token must be cached, not fetched per request"
        creates = [r for r in sim.requests() if r["op"] == "CreateItem"]
        assert creates and all(r["auth_scheme"].lower() == "bearer" for r in creates)

        sim.call("POST", "/_sim/revoke-tokens")
        third = db.log(alice, reason="third")
        db.wait_synced(third)
        assert len([r for r in sim.requests() if r["op"] == "Token"]) == 2
        assert any(r["http_status"] == 401 for r in sim.requests())
        assert len(sim.mailbox(MAILBOX)) == 3
        assert GRAPH_CLIENT_SECRET not in d.output()
    finally:
        code = d.stop()
        d.notify.close()
        sim.stop()
    assert code == 0


def test_ews_oauth2_a_stop_while_waiting_for_a_token_is_prompt_and_clean(pg, db, tmp_path,
                                                                         alice):
    """A mailbox read and the mailbox watch waiting for an OAuth2 token when the daemon
    is told to stop are dropped and freed (the ASan build's exit status says so)."""
    db.set_attribute("SyncFromOutlook", "1")
    sim, d = ews_oauth2_daemon(pg, tmp_path)
    try:
        d.start()
        db.wait_synced(db.log(alice))   # an item: the mailbox is watched from now on
        assert d.stop() == 0
        restart_holding_the_token(d, sim, "watching mailboxes: waiting for an OAuth2 token")
        code = d.stop(timeout=10)
    finally:
        d.stop()
        d.notify.close()
        sim.stop()
    assert code == 0


# ---- TLS --------------------------------------------------------------------------

@pytest.fixture
def tls_sim(tmp_path):
    import subprocess
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    workdir = tmp_path / "tls-sim"
    workdir.mkdir()
    sim = Simulator(str(workdir), ["--tls-cert", str(cert), "--tls-key", str(key)])
    sim.url = sim.url.replace("http://", "https://")
    sim.base = sim.base.replace("http://", "https://")
    sim.cert = str(cert)
    yield sim
    sim.stop()


def tls_config(pg, tls_sim, daemon, extra):
    with open(daemon.config_path, "w") as f:
        f.write(f"[database]\nconninfo = {pg.conninfo_as(DAEMON_LOGIN)}\n\n[exchange]\nurl = {tls_sim.url}\n"
                f"auth = basic\nusername = svc-followupd\n"
                f"password_file = {daemon.password_file}\ntimeout = 5\n{extra}\n")
    return daemon.config_path


def test_tls_is_verified_by_default_and_ca_file_is_honoured(pg, db, tls_sim, tmp_path, alice):
    d = Daemon(str(tmp_path), pg, tls_sim)
    try:
        config = tls_config(pg, tls_sim, d, "")
        refused = run_ctl(config, "test-connection", MAILBOX)
        assert refused.returncode == 1 and "TLS" in refused.stderr, refused.stderr

        config = tls_config(pg, tls_sim, d, f"ca_file = {tls_sim.cert}")
        accepted = run_ctl(config, "test-connection", MAILBOX)
        assert accepted.returncode == 0, accepted.stderr
        d.start()
        log_id = db.log(alice)
        db.wait_synced(log_id)
        assert len(json.loads(urlopen_insecure(tls_sim.base + "/_sim/mailboxes"))[MAILBOX]) == 1
    finally:
        assert d.stop() in (0, None)
        d.notify.close()


def test_tls_verify_no_accepts_an_unknown_certificate(pg, tls_sim, tmp_path):
    d = Daemon(str(tmp_path), pg, tls_sim)
    try:
        config = tls_config(pg, tls_sim, d, "tls_verify = no")
        result = run_ctl(config, "test-connection", MAILBOX)
        assert result.returncode == 0, result.stderr
    finally:
        d.notify.close()


def urlopen_insecure(url):
    import ssl
    import urllib.request
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=context, timeout=10) as r:
        return r.read()


def test_an_idle_daemon_stays_idle(db, sim, daemon, alice):
    """Nothing queued: no polling loop against the database (regression: an empty
    queue once read as "due now" and the daemon claimed hundreds of times a second)."""
    log_id = db.log(alice)
    db.wait_synced(log_id)
    before = daemon.output().count("next queue scan")
    proc_stat = lambda: sum(int(x) for x in open(f"/proc/{daemon.proc.pid}/stat").read()
                            .rsplit(")", 1)[1].split()[11:13])
    cpu_before = proc_stat()
    time.sleep(2)   # the thing measured is idleness itself, over a fixed span
    scans = daemon.output().count("next queue scan") - before
    assert scans <= 2, f"{scans} queue scans in 2 s of idling"
    assert proc_stat() - cpu_before <= 10, "the idle daemon used CPU"   # clock ticks


def test_check_refuses_a_secret_file_others_can_read(daemon):
    import subprocess
    from conftest import FOLLOWUPD
    # The test daemon runs as the caller: --user says so (as root, --check would
    # otherwise open the file as the unit's user followupd).
    me = ["--user", pwd.getpwuid(os.geteuid()).pw_name]
    ok = subprocess.run([FOLLOWUPD, "--check", "-c", daemon.config_path] + me,
                        capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok.stderr
    os.chmod(daemon.password_file, 0o644)
    bad = subprocess.run([FOLLOWUPD, "--check", "-c", daemon.config_path] + me,
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode == 1
    assert daemon.password_file in bad.stderr and "group or others" in bad.stderr
    # The file, the line and the key that name it, and the fix.
    line = open(daemon.config_path).read().splitlines().index(
        f"password_file = {daemon.password_file}") + 1
    assert bad.stderr.startswith(f"{daemon.config_path}:{line}: [exchange] password_file: ")
    assert "chmod 600" in bad.stderr
    assert EWS_PASSWORD not in bad.stderr + bad.stdout
    os.chmod(daemon.password_file, 0o600)


def test_delegate_access_without_impersonation(db, sim, daemon_factory, alice):
    """impersonation = no: the mailbox is named in t:DistinguishedFolderId/t:Mailbox."""
    daemon_factory("impersonation = no\n")
    log_id = db.log(alice)
    db.wait_synced(log_id)
    creates = [r for r in sim.requests() if r["op"] == "CreateItem"]
    assert len(creates) == 1 and creates[0]["valid"]
    assert creates[0]["impersonation"] is False
    assert creates[0]["mailbox"] == MAILBOX and creates[0]["anchor_mailbox"] == MAILBOX
    assert len(sim.mailbox(MAILBOX)) == 1
