"""followupctl for operators (issue 15): flush, failed, mailboxes, the words and
units of status, status --json without a database, and a DefaultMessageSystem that
switches delivery off."""
import json
import time

import pytest

from conftest import run_ctl
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
    # Blanks around the exact value are allowed (documented): on, no problem.
    db.set_attribute("DefaultMessageSystem", " Outlook Mail ")
    status = json.loads(run_ctl(daemon.config_path, "status", "--json").stdout)
    assert status["attribute_problems"] == [] and status["delivery_off"] is None


def test_usage_errors_of_the_new_commands_exit_2(daemon):
    for args in (["flush", "x"], ["flush", "1", "2"], ["flush", "0"], ["failed", "--yaml"],
                 ["failed", "--json", "x"], ["mailboxes", "bob"]):
        result = run_ctl(daemon.config_path, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr
    help_text = run_ctl(daemon.config_path, "--help").stdout
    for command in ("flush", "failed", "mailboxes"):
        assert command in help_text
