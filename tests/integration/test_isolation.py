"""One bad thing never stops the rest (issue 12): a bad row is refused at the door or
parked alone; a CRM transaction holding a log's lock never holds up the daemon."""
import threading
import time

import psycopg2
import pytest

from pgcluster import wait_for

BACKENDS = ["ews", "graph"]
FAST = ("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_attempts = 100\n"
        "settle_ms = 300\n")


def items_of(sim, mailbox):
    return sim.mailbox(mailbox)


def test_infinite_follow_up_is_refused_and_an_old_one_parked_alone(db, sim, daemon_factory):
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    with pytest.raises(psycopg2.errors.CheckViolation):
        db.log(alice, next_contact_at="infinity")
    # A row from before the constraint existed (it is NOT VALID: old rows stay).
    db.query("ALTER TABLE contactlog.contact_log "
             "DROP CONSTRAINT contact_log_next_contact_at_finite")
    try:
        bad = db.log(alice, reason="bad row", next_contact_at="infinity")
    finally:
        db.query("ALTER TABLE contactlog.contact_log ADD CONSTRAINT "
                 "contact_log_next_contact_at_finite CHECK (next_contact_at IS NULL "
                 "OR isfinite(next_contact_at)) NOT VALID")
    good = [db.log(alice, reason=f"good {n}") for n in range(5)]
    daemon_factory(FAST)
    db.wait_synced(*good, timeout=10)
    assert len(items_of(sim, "alice@example.org")) == 5
    wait_for(lambda: db.value("SELECT failed FROM contactlog.followupd_log_state "
                              "WHERE contact_log_id = %s", bad), what="the bad row parked")
    assert "infinity" in db.value("SELECT last_error FROM contactlog.followupd_log_state "
                                  "WHERE contact_log_id = %s", bad)


def test_open_crm_transaction_on_a_log_never_holds_up_others(db, pg, sim, daemon_factory):
    """A CRM session edits a log the daemon is working on and stays open (a row lock on
    the log and its outbox row). Another employee's follow-up still goes out at once,
    and the locked log is delivered once the transaction commits."""
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    bob = db.employee("bob", "Bob Baker", "bob@example.org")
    daemon_factory(FAST)
    first = db.log(alice, reason="A")
    db.wait_synced(first)
    sim.fault(mode="delay", ms=1000, count=1, ops=sim.ops("UpdateItem"))
    db.query("UPDATE contactlog.contact_log SET reason = 'B' WHERE id = %s", first)
    wait_for(lambda: any(r["op"] in sim.ops("UpdateItem") for r in sim.requests()),
             what="the update to be on its way")
    recorded_before = db.value("SELECT updated_at FROM contactlog.outlook_item "
                               "WHERE contact_log_id = %s", first)
    crm = psycopg2.connect(pg.conninfo)
    try:
        with crm.cursor() as cur:   # stays open: the lock is held until commit
            cur.execute("UPDATE contactlog.contact_log SET reason = 'C' WHERE id = %s", (first,))
        # The update's answer comes back and is recorded: the pass now ends, under the
        # CRM's lock on the log's outbox row.
        wait_for(lambda: db.value("SELECT updated_at FROM contactlog.outlook_item "
                                  "WHERE contact_log_id = %s", first) != recorded_before,
                 timeout=10, what="the update to be recorded")
        started = time.monotonic()
        other = db.log(bob, reason="unrelated")
        db.wait_synced(other, timeout=5)
        assert time.monotonic() - started < 5
        assert len(items_of(sim, "bob@example.org")) == 1
        crm.commit()
    finally:
        crm.close()
    db.wait_synced(first, timeout=10)
    [item] = items_of(sim, "alice@example.org")
    assert item["subject"] == "C"
