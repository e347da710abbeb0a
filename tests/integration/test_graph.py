"""The Microsoft Graph back end ([exchange] api = graph) against tests/sim/graph_sim.py:
OAuth2 tokens and their renewal on 401, throttling with Retry-After, $batch with a
failing member, lookup-and-adopt after a lost answer, the To Do list cache and the
appointment's time zone. The SPEC §3 behaviour itself is tested for both back ends by
test_sync.py and test_delivery.py."""
import os
import stat
import time

import pytest

from conftest import SLOW
from pgcluster import wait_for

BACKENDS = ["graph"]
PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
FAST_RETRY = "[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\nmax_attempts = 100\nsettle_ms = 300\n"
MAILBOX = "alice@example.org"


@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


def graph_requests(sim, *ops):
    return [r for r in sim.requests() if not ops or r["op"] in ops]


def items_of(sim, log_id, kind, mailbox=MAILBOX):
    return [i for i in sim.mailbox(mailbox)
            if i["extended_properties"].get(PROPERTY_KEY) == f"contactlog:{log_id}:{kind}"]


def sync_row(db, log_id):
    return db.query("SELECT attempts, failed, last_error FROM contactlog.followupd_log_state "
                    "WHERE contact_log_id = %s", log_id)


def test_token_is_fetched_once_and_sent_as_bearer(db, sim, daemon, alice):
    ids = [db.log(alice, reason=f"log {n}") for n in range(3)]
    db.wait_synced(*ids)
    tokens = graph_requests(sim, "Token")
    assert len(tokens) == 1
    assert tokens[0]["client_id"] == "followupd-test"
    assert tokens[0]["scope"] == "https://graph.microsoft.com/.default"
    assert tokens[0]["http_status"] == 200
    calls = [r for r in sim.requests() if r["op"] != "Token"]
    assert calls and all(r["auth"] == "ok" for r in calls)
    # Neither the secret nor a token ever reaches the log.
    assert "graph-Cl1ent-s3cret" not in daemon.output()
    assert "Bearer" not in daemon.output()


def test_expired_token_is_renewed_and_the_request_sent_again(db, sim, daemon, alice):
    first = db.log(alice, reason="before")
    db.wait_synced(first)
    sim.fault(mode="expire_token")
    log_id = db.log(alice, reason="after the token expired")
    db.wait_synced(log_id)
    assert len(items_of(sim, log_id, "appointment")) == 1
    requests = sim.requests()
    refused = [r for r in requests if r["http_status"] == 401]
    assert len(refused) == 1 and refused[0]["auth"] == "expired"
    later = [r for r in requests if r["seq"] > refused[0]["seq"]]
    assert later[0]["op"] == "Token" and later[0]["http_status"] == 200
    assert any(r["op"] == "CreateEvent" and r["http_status"] == 201 for r in later[1:])
    # Renewed inside the back end: the pass did not fail.
    assert sync_row(db, log_id)[0][0] == 0


def test_token_refused_twice_is_transient_with_a_clear_reason(db, sim, daemon_factory, alice):
    """A fresh token refused too is a state of the back end (SPEC §6): STATUS= and the
    journal say why; the log is neither charged nor parked, and goes once it works."""
    d = daemon_factory("[delivery]\nbackoff_initial_ms = 1500\nbackoff_max_ms = 1500\n")
    sim.fault(mode="expire_token", count=2)
    log_id = db.log(alice)
    d.notify.wait_for("waiting for Exchange to accept the service account", timeout=10)
    status = [m for m in d.notify.poll() if "accept the service account" in m][0]
    assert "refused a freshly fetched access token" in status
    assert "Tasks.ReadWrite.All" in status
    assert "refused a freshly fetched access token" in d.output()
    db.wait_synced(log_id, timeout=20)
    attempts, failed, _ = sync_row(db, log_id)[0]
    assert not failed and attempts == 0
    assert len(items_of(sim, log_id, "appointment")) == 1


def test_wrong_client_secret_is_reported_and_retried(db, sim, daemon_factory, alice):
    d = daemon_factory(start=False)
    with open(d.client_secret_file, "w") as f:
        f.write("not-the-secret\n")
    d.start()
    log_id = db.log(alice)
    wait_for(lambda: sync_row(db, log_id) and sync_row(db, log_id)[0][2],
             what="the token failure to be recorded")
    _, failed, last_error = sync_row(db, log_id)[0]
    assert not failed
    assert "invalid_client" in last_error and "client_secret_file" in last_error
    assert "not-the-secret" not in d.output()
    assert items_of(sim, log_id, "appointment") == []


def test_client_secret_readable_by_others_is_refused(db, sim, daemon_factory, alice):
    d = daemon_factory(start=False)
    os.chmod(d.client_secret_file, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    d.start(wait_ready=False)
    assert d.proc.wait(timeout=10 * SLOW) == 1
    assert "graph-client-secret" in d.output() and "chmod 600" in d.output()
    d.log.close()
    d.proc = None   # exited as it should: nothing for the fixture to stop


def test_429_retry_after_is_honoured(db, sim, daemon_factory, alice):
    daemon_factory(FAST_RETRY)
    sim.fault(mode="http_status", status=429, retry_after=2, ops=["CreateEvent"])
    first = db.log(alice, reason="throttled")
    throttled = wait_for(lambda: [r for r in sim.requests() if r["http_status"] == 429],
                         what="the 429 answer")[0]
    second = db.log(alice, reason="same mailbox, during the wait")
    db.wait_synced(first, second, timeout=15)
    wait_until = throttled["time"] + 2.0
    later = [r for r in sim.requests() if r["seq"] > throttled["seq"] and r["op"] != "Token"]
    assert later, "nothing was sent after the wait"
    early = [r for r in later if r["time"] < wait_until - 0.05]
    assert early == [], f"requests before Retry-After ended: {early}"
    assert len(items_of(sim, first, "appointment")) == 1
    assert len(items_of(sim, second, "appointment")) == 1


def test_batch_with_one_failing_member(db, sim, daemon_factory):
    """Four slow creates fill the request slots; the four logs behind them travel in one
    $batch, whose first member fails with HTTP 500: only that log is retried."""
    people = [db.employee(name, name.title(), f"{name}@example.org")
              for name in ("anna", "ben", "cora", "dave")]
    d = daemon_factory(FAST_RETRY, start=False)
    ids = [db.log(person, reason=f"first {n}") for n, person in enumerate(people)]
    ids += [db.log(person, reason=f"second {n}") for n, person in enumerate(people)]
    sim.fault(mode="delay", ms=1000, count=4, ops=["CreateEvent"])
    sim.fault(mode="http_status", status=500, count=1, ops=["CreateEvent"], in_batch=True)
    d.start()
    db.wait_synced(*ids, timeout=20)
    requests = sim.requests()
    failed = [r for r in requests if r["http_status"] == 500]
    assert len(failed) == 1 and failed[0]["batch"], "no $batch was sent"
    members = [r for r in requests if r["batch"] == failed[0]["batch"]]
    assert len(members) >= 2 and {r["op"] for r in members} == {"CreateEvent"}
    assert all(r["http_status"] == 201 for r in members if r not in failed)
    for person, name in zip(people, ("anna", "ben", "cora", "dave")):
        items = sim.mailbox(f"{name}@example.org")
        assert len(items) == 2, items
    creates = [r for r in requests if r["op"] == "CreateEvent" and r["http_status"] == 201]
    assert len(creates) == len(ids)


def test_lost_create_answer_is_looked_up_and_adopted(db, sim, daemon_factory, alice):
    db.set_attribute("AddToTasks", "1")
    daemon_factory(FAST_RETRY)
    sim.fault(mode="drop_after_perform", count=2, ops=["CreateEvent", "CreateTask"])
    log_id = db.log(alice)
    db.wait_synced(log_id)
    event, task = items_of(sim, log_id, "appointment"), items_of(sim, log_id, "task")
    assert len(event) == 1 and len(task) == 1
    ops = [r["op"] for r in sim.requests()]
    assert ops.count("CreateEvent") == 1 and ops.count("CreateTask") == 1
    assert "FindEvents" in ops and "FindTasks" in ops
    rows = dict(db.query("SELECT kind, item_id FROM contactlog.outlook_item "
                         "WHERE contact_log_id = %s", log_id))
    assert rows["appointment"] == event[0]["id"]
    list_part, task_part = rows["task"].split("/")
    assert task_part and list_part   # "<list id>/<task id>", both percent-encoded
    assert task[0]["linked_resources"][0]["webUrl"] == \
        f"https://crm.example.org/contact-logs/{log_id}"
    assert task[0]["linked_resources"][0]["applicationName"] == "CRM"
    assert task[0]["linked_resources"][0]["displayName"] == f"Contact log {log_id}"


def test_default_list_is_looked_up_once_per_mailbox(db, sim, daemon_factory, alice):
    db.set_attribute("AddToTasks", "1")
    daemon_factory()
    ids = [db.log(alice, reason=f"task {n}") for n in range(4)]
    db.wait_synced(*ids)
    assert len(graph_requests(sim, "FindLists")) == 1
    assert len(graph_requests(sim, "CreateTask")) == 4


def test_replaced_default_list_is_looked_up_again(db, sim, daemon_factory, alice):
    db.set_attribute("AddToTasks", "1")
    db.set_attribute("AddToCalendar", "0")
    daemon_factory(FAST_RETRY)
    log_id = db.log(alice)
    db.wait_synced(log_id)
    sim.call("DELETE", "/_sim/lists/" + MAILBOX)   # the list and its task are gone
    db.query("UPDATE contactlog.contact_log SET reason = 'after the list went' WHERE id = %s",
             log_id)
    db.wait_synced(log_id)
    task = items_of(sim, log_id, "task")
    assert len(task) == 1 and task[0]["subject"] == "after the list went"
    assert len(graph_requests(sim, "FindLists")) == 2


def test_appointment_carries_the_configured_time_zone(db, sim, daemon_factory, alice):
    d = daemon_factory(start=False)
    with open(d.config_path) as f:
        text = f.read()
    with open(d.config_path, "w") as f:
        f.write(text.replace("api = graph\n", "api = graph\ntime_zone = W. Europe Standard Time\n"))
    d.start()
    log_id = db.log(alice)
    db.wait_synced(log_id)
    item = items_of(sim, log_id, "appointment")[0]
    assert item["start_time_zone"] == "W. Europe Standard Time"
    assert item["end_time_zone"] == "W. Europe Standard Time"
    assert item["start"] == "2030-03-01T09:00:00Z"


def test_requests_validate(db, sim, daemon_factory, alice):
    db.set_attribute("AddToTasks", "1")
    daemon_factory()
    log_id = db.log(alice, reason="Löwe & <b>bold</b> \"quoted\" / slash")
    db.wait_synced(log_id)
    db.query("UPDATE contactlog.contact_log SET priority = 'high' WHERE id = %s", log_id)
    db.wait_synced(log_id)
    assert sim.call("GET", "/_sim/errors") == []
    assert items_of(sim, log_id, "task")[0]["subject"] == \
        "Löwe & <b>bold</b> \"quoted\" / slash"
    assert items_of(sim, log_id, "appointment")[0]["importance"] == "High"


def test_test_connection_probes_the_graph_mailbox(db, sim, daemon):
    from conftest import run_ctl
    result = run_ctl(daemon.config_path, "test-connection", "alice@example.org")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK:")
    assert any(r["op"] == "Token" for r in sim.requests())
