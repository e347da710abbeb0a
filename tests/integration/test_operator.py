"""followupctl for operators (issue 15): flush, failed, mailboxes, the words and
units of status, status --json without a database, a DefaultMessageSystem that
switches delivery off, status despite a typo elsewhere in the file, attr refusals
and role hints, --check of the password file as the service user, timestamps on
stderr, and a reload that reports its verdict."""
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import DAEMON_LOGIN, FOLLOWUPCTL, FOLLOWUPD, run_ctl
from pgcluster import free_port, wait_for

MAILBOX = "alice@example.org"
# A transient error waits minutes before the next attempt: only flush ends that early.
SLOW_RETRY = "[delivery]\nbackoff_initial_ms = 600000\nbackoff_max_ms = 900000\n"


@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


def state(db, log_id, column):
    return db.value(f"SELECT {column} FROM contactlog.followupd_log_state "
                    "WHERE contact_log_id = %s", log_id)


def waiting_out_a_back_off(db, log_id):
    return db.value("SELECT next_attempt_at > now() + interval '1 minute' "
                    "FROM contactlog.outlook_queue WHERE contact_log_id = %s "
                    "AND claimed_until IS NULL", log_id)


def test_flush_sends_a_log_waiting_out_a_back_off_now(db, sim, daemon_factory, alice):
    d = daemon_factory(SLOW_RETRY)
    sim.fault(mode="http_status", status=500, count=1)
    log_id = db.log(alice)
    wait_for(lambda: waiting_out_a_back_off(db, log_id), timeout=10,
             what="the log to wait out a back-off of minutes")
    assert state(db, log_id, "dirty") and not state(db, log_id, "failed")
    time.sleep(1)
    assert sim.mailbox(MAILBOX) == []
    # A log that is not waiting: said so, exit 1; nothing is changed.
    other = run_ctl(d.config_path, "flush", "999999")
    assert other.returncode == 1 and "not waiting" in other.stderr
    result = run_ctl(d.config_path, "flush", str(log_id))
    assert result.returncode == 0, result.stderr
    assert "1 log flushed" in result.stdout
    db.wait_synced(log_id, timeout=10)
    assert len(sim.mailbox(MAILBOX)) == 1
    # Nothing waits any more: flush of all says 0, flush of the log says not waiting.
    assert run_ctl(d.config_path, "flush").stdout.strip() == "0 logs flushed"
    again = run_ctl(d.config_path, "flush", str(log_id))
    assert again.returncode == 1 and "not waiting" in again.stderr


def test_flush_all_and_parked_logs_are_left_to_retry(db, sim, daemon_factory, alice):
    d = daemon_factory(SLOW_RETRY)
    sim.fault(mode="response_code", code="ErrorNonExistentMailbox", count=1)
    parked = db.log(alice, reason="parked")
    wait_for(lambda: state(db, parked, "failed"), what="the log parked")
    sim.fault(mode="http_status", status=500, count=-1)
    waiting = [db.log(alice, reason=f"waiting {n}") for n in range(2)]
    wait_for(lambda: all(waiting_out_a_back_off(db, i) for i in waiting), timeout=15,
             what="both logs to wait out a back-off")
    sim.call("DELETE", "/_sim/faults")
    refused = run_ctl(d.config_path, "flush", str(parked))
    assert refused.returncode == 1 and "retry" in refused.stderr
    result = run_ctl(d.config_path, "flush")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 logs flushed"
    db.wait_synced(*waiting, timeout=10)
    assert len(sim.mailbox(MAILBOX)) == 2
    assert state(db, parked, "failed")


def test_failed_lists_parked_logs_with_mailbox_and_reason(db, sim, daemon_factory, alice):
    d = daemon_factory(SLOW_RETRY)
    empty = run_ctl(d.config_path, "failed")
    assert empty.returncode == 0 and "no parked logs" in empty.stdout
    assert json.loads(run_ctl(d.config_path, "failed", "--json").stdout) == []
    sim.fault(mode="response_code", code="ErrorNonExistentMailbox", count=1)
    log_id = db.log(alice)
    wait_for(lambda: state(db, log_id, "failed"), what="the log parked")
    result = run_ctl(d.config_path, "failed", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["contact_log_id"] == log_id
    assert entry["mailbox"] == MAILBOX
    assert "ErrorNonExistentMailbox" in entry["reason"]
    assert entry["failed_at"] and entry["failed_at"].endswith("Z")
    text = run_ctl(d.config_path, "failed")
    assert text.returncode == 0
    line = [l for l in text.stdout.splitlines() if l.startswith(str(log_id))][0]
    assert MAILBOX in line and "ErrorNonExistentMailbox" in line
    # retry takes it out of the list.
    assert run_ctl(d.config_path, "retry", "--failed").returncode == 0
    db.wait_synced(log_id)
    assert json.loads(run_ctl(d.config_path, "failed", "--json").stdout) == []


def test_mailboxes_counts_per_mailbox(db, sim, daemon_factory, alice):
    bob = db.employee("bob", "Bob Baker", "bob@example.org")
    d = daemon_factory(SLOW_RETRY)
    delivered = [db.log(alice, reason=f"delivered {n}") for n in range(2)]
    db.wait_synced(*delivered)
    sim.fault(mode="response_code", code="ErrorNonExistentMailbox", count=1,
              mailboxes=["bob@example.org"])
    parked = db.log(bob, reason="parked")
    wait_for(lambda: state(db, parked, "failed"), what="bob's log parked")
    sim.fault(mode="http_status", status=500, count=1, mailboxes=["bob@example.org"])
    waiting = db.log(bob, reason="waiting")
    wait_for(lambda: waiting_out_a_back_off(db, waiting), what="bob's log to wait")
    result = run_ctl(d.config_path, "mailboxes", "--json")
    assert result.returncode == 0, result.stderr
    boxes = {m["mailbox"]: m for m in json.loads(result.stdout)}
    a, b = boxes[MAILBOX], boxes["bob@example.org"]
    assert (a["items_held"], a["pending"], a["failed"]) == (2, 0, 0)
    assert a["last_success"] and a["last_error"] is None
    assert (b["items_held"], b["pending"], b["failed"]) == (0, 1, 1)
    assert b["last_success"] is None and b["last_error"] and b["last_error_at"]
    text = run_ctl(d.config_path, "mailboxes")
    assert text.returncode == 0
    assert any(l.split()[:4] == ["bob@example.org", "0", "1", "1"]
               for l in text.stdout.splitlines()), text.stdout
    assert any(l.split()[:4] == [MAILBOX, "2", "0", "0"]
               for l in text.stdout.splitlines()), text.stdout


def test_status_names_units_and_items_in_outlook(db, sim, daemon_factory, alice):
    d = daemon_factory(SLOW_RETRY)
    log_id = db.log(alice)
    db.wait_synced(log_id)
    status = json.loads(run_ctl(d.config_path, "status", "--json").stdout)
    assert status["delivered"] == 1 and status["items_in_outlook"] == 1
    assert status["database"] == "ok" and status["delivery_off"] is None
    sim.fault(mode="http_status", status=500, count=1)
    waiting = db.log(alice, reason="waiting")
    wait_for(lambda: waiting_out_a_back_off(db, waiting), what="the log to wait")
    text = run_ctl(d.config_path, "status").stdout
    assert "items in Outlook:    1" in text
    oldest = [l for l in text.splitlines() if l.startswith("oldest pending:")][0]
    assert oldest.endswith(" s"), oldest
    assert "delivery to Exchange is off" not in text


def test_status_json_when_the_database_is_unreachable(tmp_path):
    config = tmp_path / "dead.conf"
    config.write_text(f"[database]\nconninfo = host=127.0.0.1 port={free_port()} dbname=crm "
                      "connect_timeout=2\n\n"
                      "[exchange]\nurl = http://127.0.0.1:1/EWS/Exchange.asmx\n")
    result = run_ctl(str(config), "status", "--json")
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["database"] == "unreachable" and status["error"]
    assert status["pending"] is None and status["failed"] is None
    assert status["delivered"] is None
    assert "cannot connect to the database" in result.stderr
    text = run_ctl(str(config), "status")
    assert text.returncode == 1 and text.stdout == ""


@pytest.mark.parametrize("value", ["outlook mail", "Outlook  Mail", "OutlookMail"])
def test_near_miss_default_message_system_is_a_problem_and_off(db, sim, daemon_factory, alice,
                                                              value):
    d = daemon_factory(SLOW_RETRY)
    db.set_attribute("DefaultMessageSystem", value)
    row = db.query("SELECT effective_value, problem FROM contactlog.effective_attribute "
                   "WHERE name = 'DefaultMessageSystem'")[0]
    assert row[0] == value, "a near miss counts as off: the rule is exact"
    assert "OFF" in row[1] and value in row[1]
    status = json.loads(run_ctl(d.config_path, "status", "--json").stdout)
    assert any("DefaultMessageSystem" in p for p in status["attribute_problems"])
    assert status["delivery_off"] == {"DefaultMessageSystem": value}
    text = run_ctl(d.config_path, "status").stdout
    assert f"delivery to Exchange is off: DefaultMessageSystem = '{value}'" in text
    log_id = db.log(alice)
    db.wait_synced(log_id)
    assert sim.mailbox(MAILBOX) == []
    # The daemon's log says so too (once, with the attribute problems).
    wait_for(lambda: "delivery to Exchange is OFF" in d.output(), timeout=5,
             what="the daemon to log the problem")


def test_other_default_message_system_is_off_without_a_problem(db, daemon):
    db.set_attribute("DefaultMessageSystem", "Lotus Notes")
    status = json.loads(run_ctl(daemon.config_path, "status", "--json").stdout)
    assert status["attribute_problems"] == []
    assert status["delivery_off"] == {"DefaultMessageSystem": "Lotus Notes"}
    text = run_ctl(daemon.config_path, "status").stdout
    assert "delivery to Exchange is off: DefaultMessageSystem = 'Lotus Notes'" in text
    # STATUS= says it as what the daemon is doing, and the log says it once.
    off = "STATUS=delivery to Exchange is OFF: DefaultMessageSystem = 'Lotus Notes'"
    daemon.notify.wait_for(off, timeout=10)
    wait_for(lambda: sum(off in m for m in daemon.notify.poll()) >= 3, timeout=15,
             what="two more STATUS= refreshes")
    logged = "delivery to Exchange is OFF: attribute DefaultMessageSystem = 'Lotus Notes'"
    assert daemon.output().count(logged) == 1, daemon.output()
    # Blanks around the exact value are allowed (documented): on, no problem.
    db.set_attribute("DefaultMessageSystem", " Outlook Mail ")
    status = json.loads(run_ctl(daemon.config_path, "status", "--json").stdout)
    assert status["attribute_problems"] == [] and status["delivery_off"] is None
    wait_for(lambda: "delivery to Exchange is on again" in daemon.output(), timeout=10,
             what="the daemon to log that delivery is on again")


def test_usage_errors_of_the_new_commands_exit_2(daemon):
    for args in (["flush", "x"], ["flush", "1", "2"], ["flush", "0"], ["failed", "--yaml"],
                 ["failed", "--json", "x"], ["mailboxes", "bob"]):
        result = run_ctl(daemon.config_path, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr
    help_text = run_ctl(daemon.config_path, "--help").stdout
    for command in ("flush", "failed", "mailboxes"):
        assert command in help_text


# ---- item 9: a typo in another key does not stop followupctl ------------------------

def test_status_works_while_another_key_has_a_typo(db, daemon):
    with open(daemon.config_path) as f:
        good = f.read()
    broken = good + "\n[delivery]\nconcurency = 3\n[smtp]\nhost = mail\n"
    typo_line = broken.splitlines().index("concurency = 3") + 1
    with open(daemon.config_path, "w") as f:
        f.write(broken)
    try:
        text = run_ctl(daemon.config_path, "status")
        assert text.returncode == 0, text.stderr
        assert "pending:" in text.stdout
        assert (f"followupctl: warning: {daemon.config_path}:{typo_line}: unknown key "
                "'concurency'") in text.stderr
        assert "line skipped" in text.stderr and "unknown section [smtp]" in text.stderr
        result = run_ctl(daemon.config_path, "status", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["database"] == "ok"
        # The daemon's own check refuses the file, with the same line.
        check = subprocess.run([FOLLOWUPD, "--check", "--user", "root", "-c",
                                daemon.config_path], capture_output=True, text=True, timeout=10)
        assert check.returncode == 1 and f":{typo_line}: unknown key" in check.stderr
    finally:
        with open(daemon.config_path, "w") as f:
            f.write(good)


# ---- item 8: attr refusals say what happened and which role is needed ---------------

def test_attr_invalid_value_is_refused_and_nothing_changed(pg, db, daemon, tmp_path):
    pg.psql("-c", "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles "
                  "WHERE rolname = 'followupd_admin_test') THEN "
                  "CREATE ROLE followupd_admin_test LOGIN IN ROLE contactlog_admin; END IF; END $$")
    admin = tmp_path / "admin.conf"
    admin.write_text(open(daemon.config_path).read().replace(
        pg.conninfo_as(DAEMON_LOGIN), pg.conninfo_as("followupd_admin_test")))
    before = db.value("SELECT value FROM contactlog.attribute WHERE name = 'AddToCalendar'")
    refused = run_ctl(str(admin), "attr", "AddToCalendar", "yes")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("followupctl: attr: refused, nothing changed: attribute "
                                      "AddToCalendar = 'yes' must be 0 or 1"), refused.stderr
    assert "using the default" not in refused.stderr
    assert db.value("SELECT value FROM contactlog.attribute "
                    "WHERE name = 'AddToCalendar'") == before


def test_permission_denied_names_the_role_to_grant(pg, db, daemon, tmp_path):
    # The daemon's login may not set attributes: the hint names contactlog_admin.
    denied = run_ctl(daemon.config_path, "attr", "AddToTasks", "0")
    assert denied.returncode == 1
    assert "refused, nothing changed: permission denied for table attribute" in denied.stderr
    assert "contactlog_admin" in denied.stderr and DAEMON_LOGIN in denied.stderr
    # A login in no group role: status names contactlog_daemon and the GRANT.
    pg.psql("-c", "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles "
                  "WHERE rolname = 'followupd_nobody_test') THEN "
                  "CREATE ROLE followupd_nobody_test LOGIN; END IF; END $$")
    nobody = tmp_path / "nobody.conf"
    nobody.write_text(open(daemon.config_path).read().replace(
        pg.conninfo_as(DAEMON_LOGIN), pg.conninfo_as("followupd_nobody_test")))
    status = run_ctl(str(nobody), "status")
    assert status.returncode == 1
    assert "permission denied" in status.stderr
    assert ("status needs a database role that is a member of contactlog_daemon; this "
            "configuration connects as 'followupd_nobody_test': GRANT contactlog_daemon TO "
            "followupd_nobody_test") in status.stderr, status.stderr


# ---- item 2: --check as root opens the password file as the service will -------------

def test_check_as_root_opens_the_password_file_as_the_service_user():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        service = pwd.getpwnam("followupd")
    except KeyError:
        pytest.skip("no user followupd (systemd-sysusers systemd/followupd.sysusers.conf)")
    work = tempfile.mkdtemp(prefix="followupd-check-")   # under /tmp: the service may look
    try:
        os.chmod(work, 0o755)
        secret = os.path.join(work, "ews-password")
        with open(secret, "w") as f:
            f.write("the-password\n")
        os.chmod(secret, 0o600)                             # root:root 0600, as for a credential
        conf = os.path.join(work, "followupd.conf")
        with open(conf, "w") as f:
            f.write("[exchange]\nurl = https://mail.example.org/EWS/Exchange.asmx\n"
                    "auth = ntlm\nusername = svc-followupd\n\n"
                    f"password_file = {secret}\n")
        result = subprocess.run([FOLLOWUPD, "--check", "-c", conf], capture_output=True,
                                text=True, timeout=10)
        assert result.returncode == 1 and result.stdout == ""
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert message.startswith(
            f"{conf}:6: [exchange] password_file: {secret}: the service user followupd cannot "
            "read it (owner root:root, mode 0600): make it the service's: chown "
            f"followupd:followupd {secret} (mode 0600 stays); or leave password_file empty"), \
            message
        assert "LoadCredential=ews-password:/etc/followupd/ews-password" in message
        assert "the-password" not in message
        # Done as it says: accepted.
        os.chown(secret, service.pw_uid, service.pw_gid)
        ok = subprocess.run([FOLLOWUPD, "--check", "-c", conf], capture_output=True, text=True,
                            timeout=10)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == f"{conf}: configuration OK"
    finally:
        shutil.rmtree(work)


# ---- timestamps and a reload that reports its verdict -------------------------------

def test_stderr_lines_carry_a_timestamp_off_the_journal(daemon):
    lines = [l for l in daemon.output().splitlines() if l.startswith("<")]
    assert lines
    for line in lines:
        assert re.match(r"^<[0-7]>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} ", line), line


def reload_ctl(rundir, *args):
    env = dict(os.environ, RUNTIME_DIRECTORY=rundir)
    return subprocess.run([FOLLOWUPCTL, "reload"] + list(args), capture_output=True, text=True,
                          env=env, timeout=90)


def test_reload_waits_for_the_verdict_and_fails_when_refused(db, sim, daemon_factory, alice,
                                                             tmp_path):
    rundir = tmp_path / "run"
    rundir.mkdir()
    d = daemon_factory(start=False)
    d.extra_env = {"RUNTIME_DIRECTORY": str(rundir)}
    d.start()
    assert (rundir / "pid").read_text().strip() == str(d.proc.pid)

    good = open(d.config_path).read()
    with open(d.config_path, "w") as f:
        f.write(good + "\n[delivery]\nconcurrency = 3\n")
    ok = reload_ctl(str(rundir))                       # the pid from the runtime directory
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"configuration reloaded from {d.config_path}"

    # A refused file: exit 1 with the file, line, key and reason; the daemon goes on.
    lines = good.splitlines()
    url_line = next(i for i, l in enumerate(lines) if l.startswith("url = ")) + 1
    lines[url_line - 1] = "url = http://mail.example.org/EWS/Exchange.asmx"
    with open(d.config_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    refused = reload_ctl(str(rundir), str(d.proc.pid))  # as ExecReload= runs it
    assert refused.returncode == 1, refused.stdout
    assert refused.stdout == ""
    assert refused.stderr.startswith("followupctl: reload refused, keeping the running "
                                     "configuration: "), refused.stderr
    assert f"{d.config_path}:{url_line}: [exchange] url: " in refused.stderr
    assert "plain http:// is allowed only for loopback hosts" in refused.stderr
    assert d.proc.poll() is None
    log_id = db.log(alice, reason="after a refused reload")
    db.wait_synced(log_id)

    # A key that needs a restart: taken, and said so.
    with open(d.config_path, "w") as f:
        f.write(good.replace("conninfo = ", "conninfo = application_name=changed ", 1))
    restart = reload_ctl(str(rundir))
    assert restart.returncode == 0, restart.stderr
    assert ("[database] conninfo changed, which takes effect only after a restart "
            "(systemctl restart followupd): the running value stays until then") in restart.stdout
    assert "conninfo changed, which takes effect only after a restart" in d.output()

    # No daemon: said so, exit 1.
    gone = reload_ctl(str(rundir), "999999")
    assert gone.returncode == 1 and "cannot signal followupd (pid 999999)" in gone.stderr


def status_ctl(config_path, rundir, *args):
    env = dict(os.environ, RUNTIME_DIRECTORY=rundir)
    return subprocess.run([FOLLOWUPCTL, "-c", config_path, "status"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_status_reports_the_daemons_liveness_apart_from_the_queue(db, daemon_factory, tmp_path):
    """A queue that looks fine says nothing of whether anyone works it: status says
    whether the daemon is alive (its pid from the runtime directory, checked to be a
    live followupd), in text and JSON, with the database down too."""
    rundir = tmp_path / "run"
    rundir.mkdir()
    d = daemon_factory(start=False)
    d.extra_env = {"RUNTIME_DIRECTORY": str(rundir)}
    d.start()
    status = json.loads(status_ctl(d.config_path, str(rundir), "--json").stdout)
    assert status["daemon"] == "running" and status["daemon_pid"] == d.proc.pid
    text = status_ctl(d.config_path, str(rundir)).stdout
    assert f"daemon:              running (pid {d.proc.pid})" in text

    pid = d.proc.pid
    assert d.stop() == 0
    status = json.loads(status_ctl(d.config_path, str(rundir), "--json").stdout)
    assert status["daemon"] == "not running" and status["daemon_pid"] == pid
    assert "not running" in status_ctl(d.config_path, str(rundir)).stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    status = json.loads(status_ctl(d.config_path, str(empty), "--json").stdout)
    assert status["daemon"] == "unknown" and status["daemon_pid"] is None

    # The database unreachable: the daemon's state is still reported.
    unreachable = tmp_path / "unreachable.conf"
    unreachable.write_text("[database]\nconninfo = host=127.0.0.1 port=1 dbname=crm "
                           "connect_timeout=2\n")
    result = status_ctl(str(unreachable), str(rundir), "--json")
    status = json.loads(result.stdout)
    assert result.returncode == 1
    assert status["database"] == "unreachable" and status["daemon"] == "not running"
