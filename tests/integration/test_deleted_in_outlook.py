"""An item a person deleted in Outlook stays deleted (SPEC §7; the flag
outlook_item.deleted_in_outlook, set when such a deletion is read back): later edits
of the log neither update nor recreate it, clearing the follow-up only drops our
record (no request), and a new date set in the CRM brings it back."""
import pytest

from pgcluster import wait_for

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
BACKENDS = ["ews", "graph"]
MAILBOX = "alice@example.org"


@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


def appointments(sim, log_id):
    tag = f"contactlog:{log_id}:appointment"
    return [i for i in sim.mailbox(MAILBOX)
            if i["extended_properties"].get(PROPERTY_KEY, "") == tag]


def writes(sim):
    ops = sim.ops("CreateItem", "UpdateItem", "DeleteItem")
    return [r for r in sim.requests() if r["op"] in ops]


def delete_in_outlook(db, sim, log_id):
    """What a person does, and what reading that deletion back records."""
    (item,) = appointments(sim, log_id)
    sim.call("DELETE", f"/_sim/items/{item['id']}")
    db.query("UPDATE contactlog.outlook_item SET deleted_in_outlook = true "
             "WHERE contact_log_id = %s AND kind = 'appointment'", log_id)


def test_an_item_deleted_in_outlook_stays_deleted(db, sim, daemon, alice):
    log_id = db.log(alice, reason="Deleted by hand")
    db.wait_synced(log_id)
    delete_in_outlook(db, sim, log_id)
    before = len(writes(sim))

    db.query("UPDATE contactlog.contact_log SET reason = 'edited later' WHERE id = %s", log_id)
    db.wait_synced(log_id)
    assert appointments(sim, log_id) == [], "an item deleted in Outlook was recreated"
    assert len(writes(sim)) == before, "a request was sent for an item deleted in Outlook"

    # A new date set in the CRM is a new reminder: the item comes back, once.
    db.query("UPDATE contactlog.contact_log SET next_contact_at = '2030-04-01 09:00+00' "
             "WHERE id = %s", log_id)
    wait_for(lambda: db.synced(log_id) and len(appointments(sim, log_id)) == 1,
             timeout=20, what="the appointment to come back with the new date")
    assert appointments(sim, log_id)[0]["start"] == "2030-04-01T09:00:00Z"


def test_clearing_the_follow_up_of_a_deleted_item_sends_nothing(db, sim, daemon, alice):
    log_id = db.log(alice, reason="Deleted, then no follow-up")
    db.wait_synced(log_id)
    delete_in_outlook(db, sim, log_id)
    before = len(writes(sim))
    db.query("UPDATE contactlog.contact_log SET next_contact_at = NULL WHERE id = %s", log_id)
    wait_for(lambda: db.value("SELECT count(*) FROM contactlog.outlook_item "
                              "WHERE contact_log_id = %s", log_id) == 0,
             what="our record of the deleted item to go")
    db.wait_synced(log_id)
    assert len(writes(sim)) == before, "a delete was sent for an item already deleted"
