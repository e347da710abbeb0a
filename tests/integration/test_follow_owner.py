"""The follow-up follows its owner (issue 16, FollowUpMailbox = owner): take, assign,
admin takeover and surrender move a log's items to the mailbox of its current owner
(the creator's while nobody owns it), on both back ends, through crashes, and when
the attribute is switched either way. Invariant M of docs/architecture.md ("Moves
between mailboxes") is checked by reading every mailbox of the simulator, never the
database's bookkeeping."""
import random
import signal

import json

import psycopg2
import pytest

from conftest import run_ctl
from pgcluster import wait_for

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
BACKENDS = ["ews", "graph"]
FAST = ("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nmax_attempts = 100\n"
        "settle_ms = 300\n")
KINDS = ("appointment", "task")


def set_attribute(db, name, value):
    db.query("INSERT INTO contactlog.attribute (name, value) VALUES (%s, %s) "
             "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name, value)


def placement(sim, log_ids, kinds=KINDS):
    """{(log_id, kind): [(mailbox, item)]} from every mailbox of the simulator."""
    found = {(log_id, kind): [] for log_id in log_ids for kind in kinds}
    for mailbox, items in sim.mailboxes().items():
        for item in items:
            tag = item["extended_properties"].get(PROPERTY_KEY, "")
            parts = tag.split(":")
            if len(parts) == 3 and (int(parts[1]), parts[2]) in found:
                found[(int(parts[1]), parts[2])].append((mailbox.lower(), item))
    return found


def never_two(sim, log_ids, kinds=KINDS):
    """The half of invariant M that holds at every moment, settled or not."""
    doubles = {k: [m for m, _ in v] for k, v in placement(sim, log_ids, kinds).items()
               if len(v) > 1}
    assert not doubles, f"two items of one kind: {doubles}"


def assert_home(sim, homes, kinds=KINDS):
    """Invariant M, settled: exactly one item per kind, in the log's home."""
    found = placement(sim, homes, kinds)
    wrong = {key: [m for m, _ in items] for key, items in found.items()
             if [m for m, _ in items] != [homes[key[0]].lower()]}
    assert not wrong, f"not exactly one item at home: {wrong} (homes: {homes})"
    return found


def home_settled(db, sim, homes, kinds=KINDS):
    """True once every log is synced and its items are home (read from the mailboxes)."""
    for log_id in homes:
        if not db.synced(log_id):
            return False
    found = placement(sim, homes, kinds)
    return all([m for m, _ in items] == [homes[key[0]].lower()] for key, items in found.items())


def wait_home(db, sim, homes, kinds=KINDS, timeout=30, what="the items to be home"):
    try:
        wait_for(lambda: home_settled(db, sim, homes, kinds), timeout=timeout, what=what)
    except TimeoutError:
        # Say which logs are not home and what the queue thinks of them.
        found = placement(sim, homes, kinds)
        wrong = {key: [m for m, _ in items] for key, items in found.items()
                 if [m for m, _ in items] != [homes[key[0]].lower()]}
        states = db.query("SELECT * FROM contactlog.followupd_log_state "
                          "WHERE contact_log_id = ANY(%s)", [k[0] for k in wrong] or [0])
        raise AssertionError(f"{what}: not home {wrong}; homes "
                             f"{ {k[0]: homes[k[0]] for k in wrong} }; queue {states}")
    return assert_home(sim, homes, kinds)


def kill_and_restart(d):
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.log.close()
    d.start()


@pytest.fixture
def staff(db):
    set_attribute(db, "FollowUpMailbox", "owner")
    set_attribute(db, "AddToTasks", "1")
    return {
        "alice": db.employee("alice", "Alice Archer", "alice@example.org"),
        "bob": db.employee("bob", "Bob Baker", "bob@example.org"),
        "carol": db.employee("carol", "Carol Admin", "carol@example.org", role="admin"),
    }


def test_items_follow_take_assign_takeover_surrender_complete(db, sim, daemon_factory, staff):
    daemon_factory(FAST)
    alice, bob, carol = staff["alice"], staff["bob"], staff["carol"]
    log_id = db.log(alice, reason="Follow the owner")
    wait_home(db, sim, {log_id: "alice@example.org"}, what="the items in the creator's mailbox")

    db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, alice, bob)
    found = wait_home(db, sim, {log_id: "bob@example.org"}, what="the items to move to Bob")
    assert found[(log_id, "appointment")][0][1]["subject"] == "Follow the owner"

    db.query("SELECT contactlog.take(%s, %s)", log_id, carol)   # an administrator's takeover
    wait_home(db, sim, {log_id: "carol@example.org"}, what="the items to move to the admin")

    db.query("SELECT contactlog.surrender(%s, %s)", log_id, carol)
    wait_home(db, sim, {log_id: "alice@example.org"},
              what="the items back with the creator while nobody owns the log")

    db.query("SELECT contactlog.take(%s, %s)", log_id, bob)
    wait_home(db, sim, {log_id: "bob@example.org"}, what="the items to move to Bob again")
    db.query("SELECT contactlog.complete(%s, %s)", log_id, bob)
    wait_for(lambda: db.synced(log_id) and not placement(sim, [log_id])[(log_id, "appointment")],
             timeout=30, what="the future appointment to be removed")
    tasks = placement(sim, [log_id])[(log_id, "task")]
    assert [m for m, _ in tasks] == ["bob@example.org"], "the task stays with its last owner"
    assert tasks[0][1]["status"] == "Completed"
    assert db.value("SELECT items_to_move FROM contactlog.followupd_status") == 0


def test_owner_without_mailbox_or_inactive_leaves_items_with_the_creator(db, sim, daemon_factory,
                                                                         staff):
    """An owner who cannot receive a reminder is treated as nobody: the creator keeps
    the items (docs/admin-guide.md, "Whose Outlook")."""
    daemon_factory(FAST)
    alice, bob = staff["alice"], staff["bob"]
    nomail = db.employee("nomail", "No Mail", None)
    log_id = db.log(alice, reason="Owner without mailbox")
    wait_home(db, sim, {log_id: "alice@example.org"})
    db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, alice, nomail)
    db.wait_synced(log_id, timeout=30)
    assert_home(sim, {log_id: "alice@example.org"})

    db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, nomail, bob)
    wait_home(db, sim, {log_id: "bob@example.org"})
    db.query("UPDATE contactlog.employee SET active = false WHERE id = %s", bob)
    db.query("UPDATE contactlog.contact_log SET reason = 'Bob left' WHERE id = %s", log_id)
    wait_home(db, sim, {log_id: "alice@example.org"},
              what="the items back with the creator once the owner is inactive")


def test_a_move_waits_out_the_new_mailboxs_throttling(db, sim, daemon_factory, staff):
    """Throttling holds per mailbox on both ends of a move: a create refused as
    "too busy" by the new owner's mailbox is sent again only once the wait Exchange
    asked for is over (and never as a second item)."""
    daemon_factory(FAST)
    alice, bob = staff["alice"], staff["bob"]
    log_id = db.log(alice, reason="Throttled move")
    wait_home(db, sim, {log_id: "alice@example.org"})
    if sim.backend == "ews":
        sim.fault(mode="server_busy", back_off_ms=1500, count=1, ops=sim.ops("CreateItem"),
                  mailboxes=["bob@example.org"])
    else:
        sim.fault(mode="http_status", status=429, retry_after=2, count=1,
                  ops=sim.ops("CreateItem"), mailboxes=["bob@example.org"])
    wait_s = 1.5 if sim.backend == "ews" else 2.0
    db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, alice, bob)
    wait_for(lambda: any(r["fault"] for r in sim.requests()), what="the busy answer")
    busy_at = next(r["time"] for r in sim.requests() if r["fault"])
    wait_home(db, sim, {log_id: "bob@example.org"}, what="the move to finish after the wait")
    creates = sim.ops("CreateItem")
    later = [r for r in sim.requests() if r["op"] in creates and r["fault"] is None
             and r["mailbox"] == "bob@example.org" and r["time"] > busy_at + 0.2]
    assert later, "the refused create was never sent again"
    assert min(r["time"] for r in later) >= busy_at + wait_s - 0.05, \
        "a create reached the throttled mailbox before the wait Exchange asked for"


def test_tasks_for_one_mailbox_in_two_time_zones_are_not_batched(db, sim, daemon_factory,
                                                                   staff):
    """Two employees sharing one mailbox (a team address) in different time zones: one
    CreateItem carries one TimeZoneContext, so their tasks never travel together
    (their due dates are dates in each one's own zone)."""
    if sim.backend != "ews":
        pytest.skip("EWS only: Graph sends each task's zone in the task itself")
    set_attribute(db, "AddToCalendar", "0")
    berlin = db.employee("tb", "Team Berlin", "team@example.org", time_zone="Europe/Berlin")
    york = db.employee("ty", "Team New York", "team@example.org", time_zone="America/New_York")
    with db.conn.cursor() as cur:   # one transaction: one claim, one batch
        db.conn.autocommit = False
        for creator in (berlin, york, berlin, york):
            cur.execute("INSERT INTO contactlog.contact_log (created_by, contact_name, reason, "
                        "next_contact_at) VALUES (%s, 'Team', 'zones', "
                        "'2030-03-01 23:30+00') RETURNING id", (creator,))
        db.conn.commit()
        db.conn.autocommit = True
    daemon_factory(FAST)
    wait_for(lambda: len(sim.mailbox("team@example.org")) == 4, what="four tasks")
    bodies = [r["body"] for r in sim.call("GET", "/_sim/requests?op=CreateItem&body=1")]
    zones = [("W. Europe" in b, "Eastern Standard Time" in b) for b in bodies]
    assert all(a != b for a, b in zones), f"a CreateItem mixes or lacks zones: {zones}"
    assert any(a for a, _ in zones) and any(b for _, b in zones), \
        f"the tasks of one zone went out in the other's TimeZoneContext: {zones}"


@pytest.mark.parametrize("crash_point", ["after_delete_recorded", "before_delete_recorded"])
def test_kill_between_delete_and_create_settles_to_one_item_at_home(db, sim, daemon_factory,
                                                                    staff, crash_point):
    """kill -9 in the middle of a move. The move deletes first, then creates: killed
    while the create is on its way (the delete recorded), or right after the delete
    was performed but before it was recorded, the next daemon ends with exactly one
    item of each kind in the new owner's mailbox. Exchange performs the delayed
    request within the settle time, as [delivery] settle_ms promises it does."""
    d = daemon_factory(FAST.replace("settle_ms = 300", "settle_ms = 2500"))
    alice, bob = staff["alice"], staff["bob"]
    log_id = db.log(alice, reason="Crash mid-move")
    wait_home(db, sim, {log_id: "alice@example.org"})
    if crash_point == "after_delete_recorded":
        sim.fault(mode="delay", when="before_perform", ms=1000, count=2,
                  ops=sim.ops("CreateItem"))
        waited = sim.ops("CreateItem")
    else:
        sim.fault(mode="delay", ms=1000, count=2, ops=sim.ops("DeleteItem"))
        waited = sim.ops("DeleteItem")
    seen = len([r for r in sim.requests() if r["op"] in waited])
    db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, alice, bob)
    wait_for(lambda: len([r for r in sim.requests() if r["op"] in waited]) > seen,
             what="the move to be under way")
    kill_and_restart(d)
    never_two(sim, [log_id])
    wait_home(db, sim, {log_id: "bob@example.org"}, timeout=40,
              what="the move to finish after the crash")
    sim.call("DELETE", "/_sim/faults")


def test_random_ownership_changes_and_kills_keep_invariant(db, sim, daemon_factory, staff):
    """200 random takes, assigns and surrenders by 5 employees on 20 logs, with the
    daemon killed (-9) at random moments: never two items of a kind, and once settled
    exactly one of each, in the current owner's mailbox (the creator's when open)."""
    rng = random.Random(16)
    people = [staff["alice"], staff["bob"], staff["carol"]]
    people += [db.employee(f"e{n}", f"Employee {n}", f"e{n}@example.org") for n in range(2)]
    email = {pid: db.value("SELECT email FROM contactlog.employee WHERE id = %s", pid)
             for pid in people}
    d = daemon_factory(FAST)
    logs = [db.log(rng.choice(people), reason=f"random {n}") for n in range(20)]
    done = 0
    for step in range(200):
        log_id, actor, other = rng.choice(logs), rng.choice(people), rng.choice(people)
        owner = db.value("SELECT owner_id FROM contactlog.contact_log WHERE id = %s", log_id)
        if owner is not None and rng.random() < 0.7:
            actor = owner   # mostly what people are allowed to do; refusals change nothing
        op = rng.choice(["take", "assign", "surrender"])
        try:
            if op == "assign":
                db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, actor, other)
            else:
                db.query(f"SELECT contactlog.{op}(%s, %s)", log_id, actor)
            done += 1
        except psycopg2.Error:
            pass   # refused by the ownership rules: changes nothing
        if step % 10 == 0:
            never_two(sim, logs)
        if rng.random() < 0.04:
            kill_and_restart(d)
    assert done > 100, f"only {done} of 200 ownership changes were allowed"
    rows = db.query("SELECT l.id, coalesce(o.email, c.email) FROM contactlog.contact_log l "
                    "JOIN contactlog.employee c ON c.id = l.created_by "
                    "LEFT JOIN contactlog.employee o ON o.id = l.owner_id "
                    "WHERE l.id = ANY(%s)", logs)
    homes = dict(rows)
    assert set(homes.values()) <= set(email.values())
    wait_home(db, sim, homes, timeout=90, what="every log's items to settle at home")


def test_switching_the_attribute_moves_a_thousand_logs_both_ways(db, sim, daemon_factory, staff):
    set_attribute(db, "FollowUpMailbox", "creator")
    set_attribute(db, "AddToTasks", "0")
    people = [db.employee(f"m{n}", f"Mover {n}", f"m{n}@example.org") for n in range(5)]
    d = daemon_factory(FAST + "batch_size = 50\n")
    logs = []
    with db.conn.cursor() as cur:
        for n in range(1000):
            creator = people[n % 5]
            cur.execute("INSERT INTO contactlog.contact_log (created_by, contact_name, reason, "
                        "next_contact_at) VALUES (%s, 'Mover', %s, '2030-03-01 09:00+00') "
                        "RETURNING id", (creator, f"move {n}"))
            logs.append((cur.fetchone()[0], creator))
    # Half of them change hands: with creator, that moves nothing.
    for log_id, creator in logs[::2]:
        db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, creator,
                 people[(people.index(creator) + 1) % 5])
    email = {p: f"m{n}@example.org" for n, p in enumerate(people)}
    creators = {log_id: email[c] for log_id, c in logs}
    wait_home(db, sim, creators, kinds=("appointment",), timeout=180,
              what="1000 appointments with their creators")

    set_attribute(db, "FollowUpMailbox", "owner")
    owners = dict(db.query("SELECT l.id, o.email FROM contactlog.contact_log l "
                           "JOIN contactlog.employee o ON o.id = l.owner_id"))
    assert sum(owners[i] != creators[i] for i in owners) == 500
    # followupctl status shows the progress (the daemon is moving them already).
    status = json.loads(run_ctl(d.config_path, "status", "--json").stdout)
    assert 0 < status["items_to_move"] <= 500, status
    wait_home(db, sim, owners, kinds=("appointment",), timeout=180,
              what="500 appointments to move to their owners")
    status = json.loads(run_ctl(d.config_path, "status", "--json").stdout)
    assert status["items_to_move"] == 0
    assert "items to move" not in run_ctl(d.config_path, "status").stdout

    set_attribute(db, "FollowUpMailbox", "creator")
    wait_home(db, sim, creators, kinds=("appointment",), timeout=180,
              what="500 appointments to move back to their creators")
    assert db.value("SELECT count(*) FROM contactlog.followupd_log_state WHERE failed") == 0
