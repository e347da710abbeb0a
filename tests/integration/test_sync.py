"""Outlook follows the contact log (SPEC §3), for both values of SyncUpdates:
tasks, updates in place, deletes, completion, live attributes, exactly one item
per log through lost responses, and random edit storms."""
import datetime
import random

import pytest

from pgcluster import wait_for

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
BACKENDS = ["ews", "graph"]   # every test runs against both back ends (conftest.py)
FAST_RETRY = "[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\nmax_attempts = 100\nsettle_ms = 300\n"
MAILBOX = "alice@example.org"


@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


@pytest.fixture
def bob(db):
    return db.employee("bob", "Bob Baker", "bob@example.org")


def items_of(sim, log_id, kind=None, mailbox=MAILBOX):
    tag_prefix = f"contactlog:{log_id}:"
    return [i for i in sim.mailbox(mailbox)
            if i["extended_properties"].get(PROPERTY_KEY, "").startswith(tag_prefix)
            and (kind is None or i["kind"] == kind)]


def one(sim, log_id, kind):
    found = items_of(sim, log_id, kind)
    assert len(found) == 1, f"expected one {kind} for log {log_id}, found {found}"
    return found[0]


def update_log(db, log_id, **columns):
    sets = ", ".join(f"{name} = %s" for name in columns)
    db.query(f"UPDATE contactlog.contact_log SET {sets} WHERE id = %s", *columns.values(), log_id)
    db.wait_synced(log_id)


@pytest.fixture(params=["1", "0"], ids=["SyncUpdates=1", "SyncUpdates=0"])
def sync_updates(request, db):
    db.set_attribute("SyncUpdates", request.param)
    return request.param == "1"


def test_insert_with_both_kinds_makes_one_appointment_and_one_task(db, sim, daemon, alice,
                                                                    sync_updates):
    db.set_attribute("AddToTasks", "1")
    log_id = db.log(alice, reason="Ring back", next_contact_at="2030-05-04 10:00:00+00",
                    priority="low")
    db.wait_synced(log_id)
    appointment, task = one(sim, log_id, "appointment"), one(sim, log_id, "task")
    assert task["subject"] == appointment["subject"] == "Ring back"
    assert task["importance"] == appointment["importance"] == "Low"
    # Due on the calendar date in the employee's zone (here UTC); reminder at the time.
    assert task["due_date"] == "2030-05-04T00:00:00Z"
    assert task["reminder_due_by"].startswith("2030-05-04T10:00:00")
    assert task["status"] == "NotStarted"
    assert f'href="https://crm.example.org/contact-logs/{log_id}"' in task["body"]
    assert task["extended_properties"][PROPERTY_KEY] == f"contactlog:{log_id}:task"


def test_tasks_only(db, sim, daemon, alice, sync_updates):
    db.set_attribute("AddToCalendar", "0")
    db.set_attribute("AddToTasks", "1")
    log_id = db.log(alice)
    db.wait_synced(log_id)
    assert items_of(sim, log_id, "appointment") == []
    one(sim, log_id, "task")


def test_follow_up_added_later(db, sim, daemon, alice, sync_updates):
    log_id = db.log(alice, next_contact_at=None)
    db.wait_synced(log_id)
    assert items_of(sim, log_id) == []
    update_log(db, log_id, next_contact_at="2030-06-01 08:00:00+00")
    if sync_updates:
        assert one(sim, log_id, "appointment")["start"] == "2030-06-01T08:00:00Z"
    else:
        assert items_of(sim, log_id) == []


@pytest.mark.parametrize("column,value,check", [
    ("next_contact_at", "2030-07-01 15:30:00+00",
     lambda i: i["start"] == "2030-07-01T15:30:00Z" and i["end"] == "2030-07-01T16:00:00Z"),
    ("reason", "A brand new reason", lambda i: i["subject"] == "A brand new reason"),
    ("priority", "high", lambda i: i["importance"] == "High"),
    ("contact_name", "Grace Hopper", lambda i: "Grace Hopper" in i["body"]),
    ("assigned_to", "BOB", lambda i: "Bob Baker" in i["body"]),
    ("forward_to", "BOB", lambda i: "Bob Baker" in i["body"]),
])
def test_changes_update_the_same_item(db, sim, daemon, alice, bob, sync_updates, column, value,
                                      check):
    db.set_attribute("AddToTasks", "1")
    log_id = db.log(alice)
    db.wait_synced(log_id)
    before = {kind: one(sim, log_id, kind) for kind in ("appointment", "task")}
    update_log(db, log_id, **{column: bob if value == "BOB" else value})
    for kind in ("appointment", "task"):
        after = one(sim, log_id, kind)
        assert after["id"] == before[kind]["id"], "an update must not replace the item"
        if sync_updates:
            assert after["updated_count"] >= 1
            if kind == "appointment" or column != "next_contact_at":
                assert check(after), after
        else:
            assert after == before[kind], "classic mode sends no later edits"
    if not sync_updates:
        assert [r for r in sim.requests() if r["op"] in sim.ops("UpdateItem")] == []


def test_follow_up_cleared_deletes(db, sim, daemon, alice, sync_updates):
    db.set_attribute("AddToTasks", "1")
    log_id = db.log(alice)
    db.wait_synced(log_id)
    update_log(db, log_id, next_contact_at=None)
    if sync_updates:
        assert items_of(sim, log_id) == []
        deleted = sim.call("GET", "/_sim/deleted").get(MAILBOX, [])
        assert sorted(i["kind"] for i in deleted) == ["appointment", "task"]
        assert db.value("SELECT count(*) FROM contactlog.outlook_item") == 0
    else:
        assert len(items_of(sim, log_id)) == 2


def test_log_deleted_deletes(db, sim, daemon, alice, sync_updates):
    log_id = db.log(alice)
    db.wait_synced(log_id)
    db.query("DELETE FROM contactlog.contact_log WHERE id = %s", log_id)
    db.wait_synced(log_id)
    if sync_updates:
        assert items_of(sim, log_id) == []
        # Nothing of the log is left in followupd's bookkeeping either.
        assert db.value("SELECT count(*) FROM contactlog.outlook_sync") == 0
    else:
        assert len(items_of(sim, log_id)) == 1


def test_completion_completes_task_and_removes_future_appointment(db, sim, daemon, alice,
                                                                  sync_updates):
    db.set_attribute("AddToTasks", "1")
    log_id = db.log(alice, next_contact_at="2030-01-01 09:00:00+00")
    db.wait_synced(log_id)
    update_log(db, log_id, status="completed", owner_id=None)
    if sync_updates:
        assert items_of(sim, log_id, "appointment") == []
        assert one(sim, log_id, "task")["status"] == "Completed"
    else:
        assert one(sim, log_id, "task")["status"] == "NotStarted"
        one(sim, log_id, "appointment")


def test_completion_keeps_an_appointment_that_already_began(db, sim, daemon, alice):
    log_id = db.log(alice, next_contact_at="2020-01-01 09:00:00+00")
    db.wait_synced(log_id)
    update_log(db, log_id, status="completed", owner_id=None)
    one(sim, log_id, "appointment")


def test_item_deleted_in_outlook_is_recreated_on_next_change(db, sim, daemon, alice):
    log_id = db.log(alice)
    db.wait_synced(log_id)
    first = one(sim, log_id, "appointment")
    sim.call("DELETE", "/_sim/items/" + __import__("urllib.parse").parse.quote(first["id"], safe=""))
    update_log(db, log_id, reason="After the user deleted it")
    again = one(sim, log_id, "appointment")
    assert again["id"] != first["id"]
    assert again["subject"] == "After the user deleted it"


def test_attribute_change_applies_to_next_log_without_restart(db, sim, daemon, alice):
    first = db.log(alice, reason="first")
    db.wait_synced(first)
    assert len(items_of(sim, first)) == 1
    db.set_attribute("AddToCalendar", "0")
    db.set_attribute("AddToTasks", "1")
    db.set_attribute("AppointmentDurationInMinutes", "90")
    second = db.log(alice, reason="second")
    db.wait_synced(second)
    assert items_of(sim, second, "appointment") == []
    one(sim, second, "task")
    db.set_attribute("AddToCalendar", "1")
    db.set_attribute("LinkUrlTemplate", "https://crm.test/logs/{id}/view")
    third = db.log(alice, reason="third", next_contact_at="2030-02-02 10:00:00+00")
    db.wait_synced(third)
    appointment = one(sim, third, "appointment")
    assert appointment["end"] == "2030-02-02T11:30:00Z"
    assert f'href="https://crm.test/logs/{third}/view"' in appointment["body"]


@pytest.mark.parametrize("name,value", [
    ("AddToCalendar", "yes"), ("AppointmentDurationInMinutes", "-5"),
    ("AppointmentDurationInMinutes", "abc"), ("LinkUrlTemplate", "https://no-placeholder/"),
    ("ReminderMinutesBeforeStart", "soon"),
])
def test_invalid_attribute_uses_default_and_is_reported(db, sim, daemon, alice, name, value):
    db.set_attribute(name, value)
    log_id = db.log(alice, next_contact_at="2030-02-02 10:00:00+00")
    db.wait_synced(log_id)
    appointment = one(sim, log_id, "appointment")
    assert appointment["end"] == "2030-02-02T10:30:00Z"
    assert int(appointment["reminder_minutes"]) == 15
    assert f'href="https://crm.example.org/contact-logs/{log_id}"' in appointment["body"]
    wait_for(lambda: f"attribute {name}" in daemon.output(), what="the problem in the log")
    # Reported once per change, not once per log.
    db.wait_synced(db.log(alice))
    assert daemon.output().count(f"attribute {name} = ") == 1


@pytest.mark.parametrize("batch_size", [1, 20])
def test_lost_create_responses_never_duplicate(db, sim, daemon_factory, alice, batch_size):
    """The server performs the create and the answer is lost, 50 times in a row (one
    create per request); and the same with creates batched, where one lost answer
    leaves a whole batch to be looked up."""
    daemon_factory(FAST_RETRY + f"batch_size = {batch_size}\n")
    sim.fault(mode="drop_after_perform", count=50, ops=sim.ops("CreateItem"))
    ids = [db.log(alice, reason=f"dropped {n}") for n in range(50)]
    db.wait_synced(*ids, timeout=60)
    if batch_size > 1:
        sim.call("DELETE", "/_sim/faults")
        assert len(sim.mailbox(MAILBOX)) == 50
        for log_id in ids:
            one(sim, log_id, "appointment")
        return
    assert sim.call("GET", "/_sim/faults") == [] or all(
        f.get("count", 0) == 0 for f in sim.call("GET", "/_sim/faults"))
    for log_id in ids:
        one(sim, log_id, "appointment")
    assert len(sim.mailbox(MAILBOX)) == 50
    # Every lost create was looked up and adopted, never sent twice.
    assert len([r for r in sim.requests() if r["op"] in sim.ops("CreateItem")]) == 50
    assert len([r for r in sim.requests() if r["op"] in sim.ops("FindItem")]) >= 50


def test_one_log_lost_response_50_times_in_a_row(db, sim, daemon_factory, alice):
    daemon_factory(FAST_RETRY)
    sim.fault(mode="drop_after_perform", count=50, ops=sim.ops("CreateItem", "FindItem", "UpdateItem"))
    log_id = db.log(alice)
    db.wait_synced(log_id, timeout=60)
    one(sim, log_id, "appointment")
    assert len(sim.mailbox(MAILBOX)) == 1


def expected_state(db, log_id, now, had_items_when_completed=True):
    row = db.query("SELECT status, next_contact_at, reason, priority FROM contactlog.contact_log "
                   "WHERE id = %s", log_id)
    if not row:
        return {"appointment": None, "task": None}
    status, next_contact, reason, priority = row[0]
    if next_contact is None:
        return {"appointment": None, "task": None}
    start = next_contact.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    subject = reason.split("\n")[0] if reason and reason.strip() else None
    if status == "completed":
        if not had_items_when_completed:
            return {"appointment": None, "task": None}
        return {"appointment": None if next_contact > now else ("keep", start),
                "task": ("Completed", start, subject, priority)}
    return {"appointment": ("active", start, subject, priority),
            "task": ("NotStarted", start, subject, priority)}


def test_random_edit_storm_ends_matching_the_logs(db, sim, daemon_factory, alice):
    """200 random edits on 20 logs, interleaved with delivery."""
    db.set_attribute("AddToTasks", "1")
    daemon_factory("[delivery]\nconcurrency = 4\n")
    rng = random.Random(20261125)
    ids = [db.log(alice, reason=f"log {n}") for n in range(20)]
    completed = {}
    for step in range(200):
        log_id = rng.choice(ids)
        if log_id in completed:
            continue
        op = rng.random()
        if op < 0.35:
            day = rng.randint(1, 28)
            db.query("UPDATE contactlog.contact_log SET next_contact_at = %s WHERE id = %s",
                     f"2031-03-{day:02d} {rng.randint(6, 18):02d}:00:00+00", log_id)
        elif op < 0.55:
            db.query("UPDATE contactlog.contact_log SET reason = %s WHERE id = %s",
                     f"edit {step}", log_id)
        elif op < 0.7:
            db.query("UPDATE contactlog.contact_log SET priority = %s WHERE id = %s",
                     rng.choice(["low", "normal", "high"]), log_id)
        elif op < 0.85:
            db.query("UPDATE contactlog.contact_log SET next_contact_at = NULL WHERE id = %s",
                     log_id)
        elif op < 0.95:
            db.query("UPDATE contactlog.contact_log SET next_contact_at = "
                     "'2031-04-01 09:00+00', reason = %s WHERE id = %s", f"back {step}", log_id)
        else:
            # Completion acts on the items that exist: let them exist first.
            db.wait_synced(log_id)
            completed[log_id] = db.value("SELECT next_contact_at IS NOT NULL FROM "
                                         "contactlog.contact_log WHERE id = %s", log_id)
            db.query("UPDATE contactlog.contact_log SET status = 'completed', owner_id = NULL "
                     "WHERE id = %s", log_id)
    db.wait_synced(*ids, timeout=60)
    assert db.query("SELECT contact_log_id, last_error FROM contactlog.followupd_log_state "
                    "WHERE failed") == [], "no log may be parked"

    now = datetime.datetime.now(datetime.timezone.utc)
    for log_id in ids:
        want = expected_state(db, log_id, now, completed.get(log_id, True))
        for kind in ("appointment", "task"):
            have = items_of(sim, log_id, kind)
            assert len(have) <= 1, f"duplicate {kind} for log {log_id}"
            if want[kind] is None:
                assert have == [], f"log {log_id}: {kind} should be gone"
                continue
            assert len(have) == 1, f"log {log_id}: {kind} missing"
            item = have[0]
            if kind == "appointment":
                assert item["start"] == want[kind][1], (log_id, item, want)
            else:
                assert item["status"] == want[kind][0]
                assert item["due_date"] == want[kind][1][:10] + "T00:00:00Z"
            if len(want[kind]) > 2 and want[kind][2]:
                assert item["subject"] == want[kind][2]
