"""A contact log saved in PostgreSQL becomes an appointment in its creator's
mailbox (SPEC §3, first rule), end to end: real PostgreSQL, the real daemon, the
EWS simulator on loopback."""
import time

import psycopg2
import pytest

from conftest import SLOW
from pgcluster import wait_for

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
BACKENDS = ["ews", "graph"]   # every test runs against both back ends (conftest.py)


@pytest.fixture
def people(db):
    return {
        "alice": db.employee("alice", "Alice Archer", "alice@example.org"),
        "bob": db.employee("bob", "Bob Baker", "bob@example.org"),
        "carol": db.employee("carol", "Carol Clerk", "carol@example.org"),
    }


def test_insert_becomes_appointment_in_creators_mailbox(db, sim, daemon, people):
    saved = time.monotonic()
    log_id = db.log(people["alice"], contact_name="Ada Lovelace",
                    reason="Discuss the renewal\nBring the contract draft",
                    next_contact_at="2030-03-01 09:00:00+00", priority="high",
                    assigned_to=people["bob"], forward_to=people["carol"])

    items = wait_for(lambda: sim.mailbox("alice@example.org"), timeout=5 * SLOW,
                     what="the appointment in alice's mailbox")
    assert time.monotonic() - saved < 1.0 * SLOW, "delivery took longer than one second"
    assert len(items) == 1
    item = items[0]
    assert item["kind"] == "appointment"
    assert item["subject"] == "Discuss the renewal"
    assert item["start"] == "2030-03-01T09:00:00Z"
    assert item["end"] == "2030-03-01T09:30:00Z"
    assert item["importance"] == "High"
    assert item["reminder_is_set"] in (True, "true")
    assert int(item["reminder_minutes"]) == 15
    assert item["legacy_free_busy"] == "Busy"
    assert item["send_meeting_invitations"] == "SendToNone"
    assert item["body_type"] == "HTML"
    body = item["body"]
    assert f'href="https://crm.example.org/contact-logs/{log_id}"' in body
    for text in ("Ada Lovelace", "Discuss the renewal", "Bring the contract draft",
                 "high", "Bob Baker", "Carol Clerk"):
        assert text in body
    assert item["extended_properties"][PROPERTY_KEY] == f"contactlog:{log_id}:appointment"

    # Only the creator's mailbox, never the assignee's or the secondary contact's.
    assert sim.mailbox("bob@example.org") == []
    assert sim.mailbox("carol@example.org") == []

    creates = [r for r in sim.requests() if r["op"] in sim.ops("CreateItem")]
    assert len(creates) == 1
    assert creates[0]["mailbox"] == "alice@example.org"
    assert creates[0]["valid"] is True
    if sim.backend == "ews":
        assert creates[0]["anchor_mailbox"] == "alice@example.org"
        assert creates[0]["impersonation"] is True
        assert creates[0]["content_type"].startswith("text/xml")
    else:
        assert creates[0]["op"] == "CreateEvent"
        assert creates[0]["auth"] == "ok"
        assert creates[0]["batch"] is not None or \
            creates[0]["content_type"].startswith("application/json")

    db.wait_synced(log_id)
    row = db.query("SELECT mailbox, item_id, change_key FROM contactlog.outlook_item "
                   "WHERE contact_log_id = %s AND kind = 'appointment'", log_id)
    assert row == [("alice@example.org", item["id"], item["change_key"])]


def assert_nothing_delivered(db, sim, log_id):
    db.wait_synced(log_id)
    assert sim.mailboxes() == {} or all(not items for items in sim.mailboxes().values())
    assert [r for r in sim.requests() if r["op"] in sim.ops("CreateItem")] == []


def test_completed_log_gets_nothing(db, sim, daemon, people):
    log_id = db.log(people["alice"], status="completed")
    assert_nothing_delivered(db, sim, log_id)


def test_log_without_follow_up_gets_nothing(db, sim, daemon, people):
    log_id = db.log(people["alice"], next_contact_at=None)
    assert_nothing_delivered(db, sim, log_id)


def test_rolled_back_insert_leaves_nothing(db, sim, daemon, people, pg):
    conn = psycopg2.connect(pg.conninfo)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO contactlog.contact_log (created_by, contact_name, reason, "
                    "next_contact_at) VALUES (%s, 'Ghost', 'never saved', "
                    "'2030-01-01 10:00+00') RETURNING id", (people["alice"],))
        ghost = cur.fetchone()[0]
    conn.rollback()
    conn.close()
    assert db.value("SELECT count(*) FROM contactlog.outlook_sync") == 0
    # A later, committed log arrives; the rolled-back one never does.
    log_id = db.log(people["bob"])
    wait_for(lambda: sim.mailbox("bob@example.org"), what="bob's appointment")
    db.wait_synced(log_id)
    assert sim.mailbox("alice@example.org") == []
    assert db.value("SELECT count(*) FROM contactlog.outlook_item WHERE contact_log_id = %s",
                    ghost) == 0


def test_add_to_calendar_off_gets_nothing(db, sim, daemon, people):
    db.set_attribute("AddToCalendar", "0")
    log_id = db.log(people["alice"])
    assert_nothing_delivered(db, sim, log_id)


def test_other_message_system_sends_nothing(db, sim, daemon, people):
    db.set_attribute("DefaultMessageSystem", "Lotus Notes")
    log_id = db.log(people["alice"])
    assert_nothing_delivered(db, sim, log_id)


def test_logs_saved_while_stopped_arrive_after_start(db, sim, daemon_factory, people):
    d = daemon_factory(start=False)
    ids = [db.log(people["alice"], contact_name=f"Customer {n}", reason=f"Offline {n}")
           for n in range(5)]
    d.start()
    items = wait_for(lambda: len(sim.mailbox("alice@example.org")) == 5 and
                     sim.mailbox("alice@example.org"), what="five appointments")
    assert sorted(i["subject"] for i in items) == [f"Offline {n}" for n in range(5)]
    db.wait_synced(*ids)


def test_creator_without_email_is_parked_with_reason(db, sim, daemon, people):
    nomail = db.employee("nomail", "No Mail", None)
    log_id = db.log(nomail)
    wait_for(lambda: db.value("SELECT failed FROM contactlog.followupd_log_state "
                              "WHERE contact_log_id = %s", log_id), what="the log to be parked")
    assert "no email" in db.value("SELECT last_error FROM contactlog.followupd_log_state "
                                  "WHERE contact_log_id = %s", log_id)
    assert sim.mailboxes() == {} or all(not v for v in sim.mailboxes().values())


def test_sigterm_exits_cleanly_and_says_stopping(db, sim, daemon, people):
    log_id = db.log(people["alice"])
    db.wait_synced(log_id)
    assert daemon.stop() == 0
    assert any("STOPPING=1" in m for m in daemon.notify.poll())
