"""Tests of tests/sim/graph_sim.py itself: the token endpoint, bearer checks, events,
To Do lists and tasks, $filter lookups, $batch and faults, through real HTTP."""
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPConnection, HTTPException

import pytest

SIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "graph_sim.py")
PYTHON = os.environ.get("PYTHON3") or "/usr/bin/python3"
CLIENT, SECRET = "app-1", "s3cret"
PROP = "String {6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86} Name FollowupdContactLog"
KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        proc = subprocess.Popen([PYTHON, SIM, "--port", "0", "--port-file", port_file,
                                 "--clients", f"{CLIENT}:{SECRET}", "--token-lifetime", "60",
                                 "--known-mailboxes", "alice@example.org,bob@example.org"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not os.path.exists(port_file):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "graph_sim did not start"
            time.sleep(0.05)
        with open(port_file) as f:
            base = f"http://127.0.0.1:{int(f.read())}"
        yield base
        proc.terminate()
        proc.wait(timeout=10)


def http(method, url, body=None, headers=None, form=None):
    data, headers = None, dict(headers or {})
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text, status, head = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        text, status, head = exc.read(), exc.code, dict(exc.headers)
    return status, (json.loads(text) if text else None), head


@pytest.fixture
def sim(server):
    http("POST", server + "/_sim/reset")
    return server


def token(base, secret=SECRET, scope="https://graph.microsoft.com/.default"):
    return http("POST", base + "/tenant-id/oauth2/v2.0/token",
                form={"grant_type": "client_credentials", "client_id": CLIENT,
                      "client_secret": secret, "scope": scope})


@pytest.fixture
def graph(sim):
    status, answer, _ = token(sim)
    assert status == 200
    bearer = {"Authorization": "Bearer " + answer["access_token"]}

    def call(method, path, body=None):
        return http(method, sim + "/v1.0" + path, body, bearer)
    return call


def event(log_id, **extra):
    body = {"subject": "Call", "body": {"contentType": "html", "content": "<p>x</p>"},
            "start": {"dateTime": "2030-03-01T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2030-03-01T09:30:00", "timeZone": "UTC"},
            "isReminderOn": True, "reminderMinutesBeforeStart": 15, "importance": "high",
            "showAs": "busy", "originalStartTimeZone": "W. Europe Standard Time",
            "singleValueExtendedProperties": [
                {"id": PROP, "value": f"contactlog:{log_id}:appointment"}]}
    body.update(extra)
    return body


def quote(text):
    return urllib.parse.quote(text, safe="")


def test_token_endpoint(sim):
    status, answer, _ = token(sim)
    assert status == 200 and answer["token_type"] == "Bearer" and answer["expires_in"] == 60
    assert token(sim, secret="wrong")[:2][0] == 401
    assert token(sim, secret="wrong")[1]["error"] == "invalid_client"
    assert token(sim, scope="https://outlook.office365.com/.default")[1]["error"] == \
        "invalid_scope"
    ops = [r["op"] for r in http("GET", sim + "/_sim/requests")[1]]
    assert ops == ["Token"] * 4


def test_bearer_is_required(sim):
    status, answer, _ = http("GET", sim + "/v1.0/users/alice@example.org/events")
    assert status == 401 and answer["error"]["code"] == "InvalidAuthenticationToken"
    status, _, _ = http("GET", sim + "/v1.0/users/alice@example.org/events",
                        headers={"Authorization": "Bearer made-up"})
    assert status == 401
    assert [r["auth"] for r in http("GET", sim + "/_sim/requests")[1]] == ["missing", "invalid"]


def test_event_life_and_lookup(sim, graph):
    status, created, _ = graph("POST", "/users/Alice@Example.org/events", event(5))
    assert status == 201 and created["changeKey"]
    item = http("GET", sim + "/_sim/mailboxes")[1]["alice@example.org"][0]
    assert item["kind"] == "appointment" and item["importance"] == "High"
    assert item["start"] == "2030-03-01T09:00:00Z" and item["legacy_free_busy"] == "Busy"
    assert item["extended_properties"][KEY] == "contactlog:5:appointment"
    assert item["start_time_zone"] == "W. Europe Standard Time"
    assert item["send_meeting_invitations"] == "SendToNone"
    filt = (f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP}' and "
            "ep/value eq 'contactlog:5:appointment')")
    status, found, _ = graph("GET", "/users/alice@example.org/events?$filter=" + quote(filt))
    assert status == 200 and [e["id"] for e in found["value"]] == [created["id"]]
    status, found, _ = graph("GET", "/users/alice@example.org/events?$filter="
                             + quote(filt.replace(":5:", ":6:")))
    assert found["value"] == []
    path = "/users/alice@example.org/events/" + quote(created["id"])
    status, patched, _ = graph("PATCH", path, {"subject": "Changed", "importance": "low"})
    assert status == 200 and patched["subject"] == "Changed"
    assert graph("DELETE", path)[0] == 204
    assert graph("DELETE", path)[0] == 404
    assert http("GET", sim + "/_sim/deleted")[1]["alice@example.org"][0]["subject"] == "Changed"


def test_bad_bodies_are_refused(sim, graph):
    assert graph("POST", "/users/alice@example.org/events", event(1, attendee=[]))[0] == 400
    bad_time = event(1, start={"dateTime": "tomorrow", "timeZone": "UTC"})
    assert graph("POST", "/users/alice@example.org/events", bad_time)[0] == 400
    assert graph("POST", "/users/alice@example.org/events", event(1, importance="urgent"))[0] \
        == 400
    assert graph("POST", "/users/nobody@example.org/events", event(1))[1]["error"]["code"] == \
        "ErrorInvalidUser"
    assert len(http("GET", sim + "/_sim/errors")[1]) == 3


def test_transaction_id_drops_a_repeated_create(sim, graph):
    first = graph("POST", "/users/alice@example.org/events", event(1, transactionId="t-1"))[1]
    again = graph("POST", "/users/alice@example.org/events", event(1, transactionId="t-1"))[1]
    assert first["id"] == again["id"]
    assert len(http("GET", sim + "/_sim/mailboxes/alice@example.org")[1]) == 1


def test_todo_list_and_tasks(sim, graph):
    filt = quote("wellknownListName eq 'defaultList'")
    lists = graph("GET", "/users/bob@example.org/todo/lists?$filter=" + filt)[1]["value"]
    assert len(lists) == 1 and lists[0]["wellknownListName"] == "defaultList"
    tasks = f"/users/bob@example.org/todo/lists/{quote(lists[0]['id'])}/tasks"
    body = {"title": "Ring", "body": {"contentType": "html", "content": "<p/>"},
            "importance": "normal", "status": "notStarted", "isReminderOn": True,
            "dueDateTime": {"dateTime": "2030-05-04T10:00:00", "timeZone": "UTC"},
            "reminderDateTime": {"dateTime": "2030-05-04T10:00:00", "timeZone": "UTC"},
            "linkedResources": [{"webUrl": "https://crm/1", "applicationName": "CRM",
                                 "displayName": "Contact log 1",
                                 "externalId": "contactlog:1:task"}]}
    status, created, _ = graph("POST", tasks, body)
    assert status == 201
    item = http("GET", sim + "/_sim/mailboxes/bob@example.org")[1][0]
    assert item["kind"] == "task" and item["status"] == "NotStarted"
    assert item["due_date"] == "2030-05-04T10:00:00Z"
    assert item["extended_properties"][KEY] == "contactlog:1:task"
    found = graph("GET", tasks + "?$filter=" + quote(
        "linkedResources/any(r: r/externalId eq 'contactlog:1:task')"))[1]["value"]
    assert [t["id"] for t in found] == [created["id"]]
    task_path = tasks + "/" + quote(created["id"])
    assert graph("PATCH", task_path, {"status": "completed"})[1]["status"] == "completed"
    assert graph("PATCH", task_path, {"linkedResources": []})[0] == 400
    # A replaced list: the old id is gone.
    http("DELETE", sim + "/_sim/lists/bob@example.org")
    assert graph("GET", tasks)[0] == 404
    assert graph("POST", tasks, body)[0] == 404


def test_batch_members_and_faults(sim, graph):
    http("POST", sim + "/_sim/faults", {"mode": "http_status", "status": 429, "retry_after": 3,
                                        "ops": ["CreateEvent"]})
    requests = [{"id": str(n), "method": "POST", "url": "/users/alice@example.org/events",
                 "headers": {"Content-Type": "application/json"}, "body": event(n)}
                for n in range(1, 4)]
    status, answer, _ = graph("POST", "/$batch", {"requests": requests})
    assert status == 200
    by_id = {r["id"]: r for r in answer["responses"]}
    assert by_id["1"]["status"] == 429 and by_id["1"]["headers"]["Retry-After"] == "3"
    assert by_id["2"]["status"] == 201 and by_id["3"]["status"] == 201
    log = http("GET", sim + "/_sim/requests")[1]
    batch = [r for r in log if r["op"] == "Batch"][0]
    assert [r["op"] for r in log if r["batch"] == batch["seq"]] == ["CreateEvent"] * 3
    too_many = {"requests": [dict(requests[0], id=str(n)) for n in range(21)]}
    assert graph("POST", "/$batch", too_many)[0] == 400


def test_expire_token_fault(sim, graph):
    http("POST", sim + "/_sim/faults", {"mode": "expire_token"})
    assert graph("GET", "/users/alice@example.org/events")[0] == 401
    assert graph("GET", "/users/alice@example.org/events")[0] == 401   # revoked for good
    assert http("GET", sim + "/_sim/faults")[1] == []


# ---------------------------------------------------------------------------
# Late answers, moved and edited items, connections, settings (sim_control.py)
# ---------------------------------------------------------------------------

EVENTS = "/users/alice@example.org/events"
LOST = (urllib.error.URLError, ConnectionError, HTTPException)


def in_thread(function):
    """Runs function() in a thread; join() gives back [result or exception]."""
    outcome = []

    def run():
        try:
            outcome.append(function())
        except Exception as exc:  # handed to the test through outcome
            outcome.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def default_tasks(graph, mailbox="bob@example.org"):
    lists = graph("GET", f"/users/{mailbox}/todo/lists")[1]["value"]
    return f"/users/{mailbox}/todo/lists/{quote(lists[0]['id'])}/tasks"


def todo_task(log_id, due="2030-05-04T00:00:00.0000000", zone="UTC"):
    return {"title": f"Ring {log_id}", "dueDateTime": {"dateTime": due, "timeZone": zone},
            "linkedResources": [{"applicationName": "CRM", "displayName": f"Log {log_id}",
                                 "externalId": f"contactlog:{log_id}:task"}]}


def event_filter(log_id):
    return "?$filter=" + quote(f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP}' and "
                               f"ep/value eq 'contactlog:{log_id}:appointment')")


def task_filter(log_id):
    return "?$filter=" + quote(f"linkedResources/any(r: r/externalId eq "
                               f"'contactlog:{log_id}:task')")


def connection(base, timeout=10):
    return HTTPConnection("127.0.0.1", urllib.parse.urlsplit(base).port,
                                      timeout=timeout)


def items(sim, mailbox="alice@example.org"):
    return http("GET", f"{sim}/_sim/mailboxes/{mailbox}")[1]


def test_fault_delay_before_perform_and_drop(sim, graph):
    http("POST", sim + "/_sim/faults", {"mode": "delay", "when": "before_perform", "ms": 800,
                                        "answer": "drop", "ops": ["CreateEvent"]})
    started = time.monotonic()
    thread, outcome = in_thread(lambda: graph("POST", EVENTS, event(1)))
    time.sleep(0.3)
    assert items(sim) == []                  # not performed yet; others are answered
    thread.join(10)
    assert isinstance(outcome[0], LOST), outcome
    assert time.monotonic() - started >= 0.8
    assert len(items(sim)) == 1
    [record] = http("GET", sim + "/_sim/requests?op=CreateEvent")[1]
    assert record["fault"] == "delay"


def test_fault_delay_then_drop_in_a_batch_drops_the_batch(sim, graph):
    http("POST", sim + "/_sim/faults", {"mode": "delay", "ms": 300, "answer": "drop",
                                        "ops": ["CreateEvent"], "in_batch": True})
    # in_batch: a plain create is not delayed.
    assert graph("POST", EVENTS, event(1))[0] == 201
    members = [{"id": str(n), "method": "POST", "url": EVENTS, "body": event(n),
                "headers": {"Content-Type": "application/json"}} for n in (2, 3)]
    started = time.monotonic()
    with pytest.raises(LOST):
        graph("POST", "/$batch", {"requests": members})
    assert time.monotonic() - started >= 0.3
    assert len(items(sim)) == 3              # both members performed, the answer lost


def test_batch_members_are_late_side_by_side_not_one_after_another(sim, graph):
    # Found by the soak: three members performed 2.5 s late one after another came
    # 7.5 s late, past the settle time the soak (and an operator) sets for a late write.
    http("POST", sim + "/_sim/faults", {"mode": "delay", "when": "before_perform", "ms": 1000,
                                        "answer": "drop", "count": 3, "ops": ["CreateEvent"]})
    members = [{"id": str(n), "method": "POST", "url": EVENTS, "body": event(n),
                "headers": {"Content-Type": "application/json"}} for n in (1, 2, 3)]
    started = time.monotonic()
    with pytest.raises(LOST):
        graph("POST", "/$batch", {"requests": members})
    assert 1.0 <= time.monotonic() - started < 2.5   # one delay, not three
    assert len(items(sim)) == 3
    http("POST", sim + "/_sim/faults", {"mode": "delay", "ms": 1000, "count": 3,
                                        "ops": ["PatchEvent"]})
    ids = [i["id"] for i in items(sim)]
    members = [{"id": str(n), "method": "PATCH", "url": f"{EVENTS}/{quote(i)}",
                "body": {"subject": f"late {n}"}, "headers": {"Content-Type": "application/json"}}
               for n, i in enumerate(ids)]
    started = time.monotonic()
    status, answer, _ = graph("POST", "/$batch", {"requests": members})
    assert status == 200 and [r["status"] for r in answer["responses"]] == [200] * 3
    assert 1.0 <= time.monotonic() - started < 2.5   # the late answers waited out once


def test_a_delayed_request_does_not_hold_up_others(sim, graph):
    http("POST", sim + "/_sim/faults", {"mode": "delay", "ms": 2000, "ops": ["CreateEvent"]})
    slow, outcome = in_thread(lambda: graph("POST", EVENTS, event(1)))
    time.sleep(0.2)
    started = time.monotonic()
    assert token(sim)[0] == 200
    found = graph("GET", EVENTS + event_filter(1))[1]["value"]
    assert len(found) == 1                   # performed; only its answer waits
    assert graph("POST", EVENTS, event(2))[0] == 201
    assert time.monotonic() - started < 1.5
    slow.join(10)
    assert outcome[0][0] == 201


def test_control_move_gives_events_and_tasks_new_ids(sim, graph):
    created = graph("POST", EVENTS, event(1, transactionId="t-1"))[1]
    # Unquoted, as a test may send it: the id's '/' do not confuse the path.
    moved = http("POST", f"{sim}/_sim/items/{created['id']}/move")[1]["id"]
    assert moved != created["id"]
    assert base64.b64decode(moved).startswith(b"\x00\x00\x1b\x00sim")
    assert graph("GET", f"{EVENTS}/{quote(created['id'])}")[0] == 404
    assert graph("PATCH", f"{EVENTS}/{quote(created['id'])}", {"subject": "x"})[0] == 404
    assert graph("DELETE", f"{EVENTS}/{quote(created['id'])}")[0] == 404
    status, got = graph("GET", f"{EVENTS}/{quote(moved)}")[:2]
    assert status == 200 and got["subject"] == "Call" and got["changeKey"] == \
        created["changeKey"]
    assert [e["id"] for e in graph("GET", EVENTS + event_filter(1))[1]["value"]] == [moved]
    [item] = items(sim)
    assert item["previous_ids"] == [created["id"]] and item["transaction_id"] == "t-1"
    assert item["extended_properties"][KEY] == "contactlog:1:appointment"
    # Graph's transactionId still finds the moved event.
    assert graph("POST", EVENTS, event(1, transactionId="t-1"))[1]["id"] == moved

    tasks = default_tasks(graph)
    task = graph("POST", tasks, todo_task(7))[1]
    moved_task = http("POST", f"{sim}/_sim/items/{quote(task['id'])}/move")[1]["id"]
    assert base64.b64decode(moved_task).startswith(b"\x00\x00\x1b\x00task")
    assert graph("GET", f"{tasks}/{quote(task['id'])}")[0] == 404
    found = graph("GET", tasks + task_filter(7))[1]["value"]
    assert [t["id"] for t in found] == [moved_task]
    assert found[0]["linkedResources"] == task["linkedResources"]
    assert http("POST", f"{sim}/_sim/items/{quote(task['id'])}/move")[0] == 404


def test_control_patch_edits_like_a_person_in_outlook(sim, graph):
    created = graph("POST", EVENTS, event(1))[1]
    path = f"{sim}/_sim/items/{quote(created['id'])}"
    time.sleep(0.01)
    status, edited, _ = http("PATCH", path, {"subject": "Moved by Ann",
                                             "start": "2030-03-02T10:00:00Z",
                                             "end": "2030-03-02T11:00:00Z"})
    assert status == 200 and edited["subject"] == "Moved by Ann"
    assert edited["edited_count"] == 1 and edited["updated_count"] == 0
    got = graph("GET", f"{EVENTS}/{quote(created['id'])}")[1]
    assert got["subject"] == "Moved by Ann"
    assert got["start"] == {"dateTime": "2030-03-02T10:00:00.0000000", "timeZone": "UTC"}
    assert got["@odata.etag"] != created["@odata.etag"]
    assert got["lastModifiedDateTime"] > created["lastModifiedDateTime"]
    assert got["createdDateTime"] == created["createdDateTime"]
    for body in ({"status": "Completed"}, {"start": "2030-03-02T12:00:00Z"},
                 {"start": "2030-03-02T10:00:00"}, {"subject": None}, {}):
        assert http("PATCH", path, body)[0] == 400, body

    tasks = default_tasks(graph)
    task = graph("POST", tasks, todo_task(2))[1]
    task_path = f"{sim}/_sim/items/{quote(task['id'])}"
    status, edited, _ = http("PATCH", task_path, {"status": "Completed",
                                                  "due_date": "2030-05-06T00:00:00Z"})
    assert status == 200 and edited["status"] == "Completed"
    assert edited["percent_complete"] == 100.0
    assert edited["due_date"] == "2030-05-06T00:00:00Z" and edited["due_time_zone"] == "UTC"
    got = graph("GET", f"{tasks}/{quote(task['id'])}")[1]
    assert got["status"] == "completed" and got["@odata.etag"] != task["@odata.etag"]
    assert got["dueDateTime"] == {"dateTime": "2030-05-06T00:00:00.0000000", "timeZone": "UTC"}
    edited = http("PATCH", task_path, {"due_date": "2030-05-07T00:00:00",
                                       "due_time_zone": "W. Europe Standard Time"})[1]
    assert edited["due_date"] == "2030-05-07T00:00:00"
    assert edited["due_time_zone"] == "W. Europe Standard Time"
    assert http("PATCH", task_path, {"due_time_zone": "Atlantis"})[0] == 400
    assert http("PATCH", task_path, {"start": "2030-05-07T00:00:00Z"})[0] == 400
    assert http("PATCH", f"{sim}/_sim/items/nope", {"subject": "x"})[0] == 404


def test_request_log_names_the_connection(sim):
    bearer = {"Authorization": "Bearer " + token(sim)[1]["access_token"],
              "Content-Type": "application/json"}
    conn = connection(sim)
    try:
        for method, path, body in (("GET", EVENTS, None), ("GET", "/_sim/stats", None),
                                   ("POST", "/$batch", {"requests": [
                                       {"id": "1", "method": "GET", "url": EVENTS},
                                       {"id": "2", "method": "GET", "url": EVENTS}]})):
            conn.request(method, ("" if path.startswith("/_sim") else "/v1.0") + path,
                         body=json.dumps(body) if body else None, headers=bearer)
            conn.getresponse().read()
        local = "%s:%d" % conn.sock.getsockname()
    finally:
        conn.close()
    log = http("GET", sim + "/_sim/requests")[1]
    assert [(r["op"], r["connection_seq"]) for r in log] == [
        ("Token", 0), ("FindEvents", 0), ("Batch", 2), ("FindEvents", 2), ("FindEvents", 2)]
    assert {r["connection"] for r in log[1:]} == {local} and log[0]["connection"] != local


def test_settings_ignore_connection_close(sim, graph):
    bearer = {"Authorization": "Bearer " + token(sim)[1]["access_token"],
              "Connection": "close"}

    def two_calls():
        conn = connection(sim)
        try:
            answers = []
            for _ in range(2):
                conn.request("GET", "/v1.0" + EVENTS, headers=bearer)
                response = conn.getresponse()
                response.read()
                answers.append((response.status, response.getheader("Connection")))
            return answers
        finally:
            conn.close()

    assert two_calls() == [(200, "close")] * 2        # http.client opened a second one
    assert http("POST", sim + "/_sim/settings", {"ignore_connection_close": True})[1] == \
        {"ignore_connection_close": True, "lookup_lag_ms": 0}
    assert two_calls() == [(200, None)] * 2           # one connection carried both
    log = http("GET", sim + "/_sim/requests?op=FindEvents")[1]
    assert [r["connection_seq"] for r in log] == [0, 0, 0, 1]
    assert log[2]["connection"] == log[3]["connection"]
    assert http("POST", sim + "/_sim/settings", {"ignore_connection_close": "yes"})[0] == 400
    http("POST", sim + "/_sim/reset")
    assert http("GET", sim + "/_sim/settings")[1] == {"ignore_connection_close": False,
                                                      "lookup_lag_ms": 0}


def test_settings_lookup_lag_and_transaction_id(sim, graph):
    http("POST", sim + "/_sim/settings", {"lookup_lag_ms": 800})
    created = graph("POST", EVENTS, event(1, transactionId="tx-1"))[1]
    tasks = default_tasks(graph)
    task = graph("POST", tasks, todo_task(1))[1]
    assert graph("GET", EVENTS + event_filter(1))[1]["value"] == []
    assert graph("GET", tasks + task_filter(1))[1]["value"] == []
    assert graph("GET", f"{EVENTS}/{quote(created['id'])}")[0] == 200    # by id: no lag
    assert len(graph("GET", EVENTS)[1]["value"]) == 1                     # no $filter
    # The lookup missed; the create goes again, with the same transactionId.
    status, again, _ = graph("POST", EVENTS, event(1, transactionId="tx-1"))
    assert status == 201 and again["id"] == created["id"]
    member = {"id": "1", "method": "POST", "url": EVENTS,
              "headers": {"Content-Type": "application/json"},
              "body": event(1, transactionId="tx-1")}
    answer = graph("POST", "/$batch", {"requests": [member]})[1]
    assert answer["responses"][0]["status"] == 201
    assert answer["responses"][0]["body"]["id"] == created["id"]
    log = http("GET", sim + "/_sim/requests?op=CreateEvent")[1]
    assert [r.get("deduplicated", False) for r in log] == [False, True, True]
    [item] = items(sim)
    assert item["transaction_id"] == "tx-1"
    time.sleep(0.9)
    assert [e["id"] for e in graph("GET", EVENTS + event_filter(1))[1]["value"]] == \
        [created["id"]]
    assert [t["id"] for t in graph("GET", tasks + task_filter(1))[1]["value"]] == [task["id"]]
    # Only live events count: after a delete, the same transactionId makes a new one.
    assert graph("DELETE", f"{EVENTS}/{quote(created['id'])}")[0] == 204
    third = graph("POST", EVENTS, event(1, transactionId="tx-1"))[1]
    assert third["id"] != created["id"] and len(items(sim)) == 1


def test_task_due_date_time_zones(sim, graph):
    tasks = default_tasks(graph)
    utc = graph("POST", tasks, todo_task(1, zone="UTC"))[1]
    status, zoned, _ = graph("POST", tasks, todo_task(2, zone="W. Europe Standard Time"))
    assert status == 201
    assert zoned["dueDateTime"] == {"dateTime": "2030-05-04T00:00:00.0000000",
                                    "timeZone": "W. Europe Standard Time"}
    assert utc["dueDateTime"] == {"dateTime": "2030-05-04T00:00:00.0000000", "timeZone": "UTC"}
    shown = {i["subject"]: i for i in items(sim, "bob@example.org")}
    assert shown["Ring 1"]["due_date"] == "2030-05-04T00:00:00Z"        # as before
    assert shown["Ring 1"]["due_time_zone"] == "UTC"
    assert shown["Ring 2"]["due_date"] == "2030-05-04T00:00:00"
    assert shown["Ring 2"]["due_time_zone"] == "W. Europe Standard Time"
    for zone in ("Pacific Standard Time", "Europe/Berlin", "UTC-11", "Russia Time Zone 3"):
        assert graph("POST", tasks, todo_task(3, zone=zone))[0] == 201, zone
    for zone in ("Mars Standard Time!", "Atlantis", "", None):
        assert graph("POST", tasks, todo_task(4, zone=zone))[0] == 400, zone
    patched = graph("PATCH", f"{tasks}/{quote(utc['id'])}",
                    {"dueDateTime": {"dateTime": "2030-06-01T00:00:00",
                                     "timeZone": "Romance Standard Time"}})[1]
    assert patched["dueDateTime"]["timeZone"] == "Romance Standard Time"
    # Events still take UTC only (what followupd sends).
    assert graph("POST", EVENTS, event(1, start={"dateTime": "2030-03-01T09:00:00",
                                                 "timeZone": "W. Europe Standard Time"}))[0] \
        == 400


# ---------------------------------------------------------------------------
# Delta queries: calendarView/delta and todo/lists/{id}/tasks/delta (Outlook -> CRM)
# ---------------------------------------------------------------------------

WINDOW = "startDateTime=2030-03-01T00:00:00Z&endDateTime=2030-04-01T00:00:00Z"


@pytest.fixture
def bearer(sim):
    return {"Authorization": "Bearer " + token(sim)[1]["access_token"]}


def events_delta(sim, mailbox="alice@example.org", query=WINDOW):
    return f"{sim}/v1.0/users/{mailbox}/calendarView/delta?{query}"


def delta_round(link, bearer, page=None):
    """Follows a round to its end: (entries, pages, deltaLink)."""
    headers = dict(bearer, **({"Prefer": f"odata.maxpagesize={page}"} if page else {}))
    entries, pages = [], 0
    while True:
        status, answer, _ = http("GET", link, headers=headers)
        assert status == 200, answer
        pages += 1
        assert len(answer["value"]) <= (page or 10)
        entries += answer["value"]
        if "@odata.deltaLink" in answer:
            assert "@odata.nextLink" not in answer
            return entries, pages, answer["@odata.deltaLink"]
        link = answer["@odata.nextLink"]


def at(day, hour=9):
    """An event body's start/end on that day of March 2030 (day > 31: later months)."""
    month, day = (3, day) if day <= 31 else (5, day - 31)
    return {"start": {"dateTime": f"2030-{month:02d}-{day:02d}T{hour:02d}:00:00",
                      "timeZone": "UTC"},
            "end": {"dateTime": f"2030-{month:02d}-{day:02d}T{hour:02d}:30:00",
                    "timeZone": "UTC"}}


def by_id(entries):
    return {e["id"]: e for e in entries}


def test_events_delta_round_paging_and_changes(sim, graph, bearer):
    created = [graph("POST", EVENTS, event(n, **at(n + 1)))[1] for n in range(3)]
    outside = graph("POST", EVENTS, event(9, **at(40)))[1]          # May: not in the view
    status, answer, headers = http("GET", events_delta(sim),
                                   headers=dict(bearer, Prefer="odata.maxpagesize=2"))
    assert status == 200 and headers["Preference-Applied"] == "odata.maxpagesize=2"
    assert answer["@odata.nextLink"].startswith(
        f"{sim}/v1.0/users/alice@example.org/calendarView/delta?$skiptoken=")
    assert answer["@odata.context"].endswith("$metadata#Collection(event)")
    entries, pages, delta_link = delta_round(events_delta(sim), bearer, page=2)
    assert pages == 2 and [e["id"] for e in entries] == [e["id"] for e in created]
    assert all(e["@odata.type"] == "#microsoft.graph.event" for e in entries)
    assert entries[0]["@odata.etag"] == created[0]["@odata.etag"]
    assert delta_link.startswith(
        f"{sim}/v1.0/users/alice@example.org/calendarView/delta?$deltatoken=")
    assert delta_round(delta_link, bearer)[0] == []                 # nothing since

    a, b, c = (e["id"] for e in created)
    # A person moves A out of the view and the outside one into it; the daemon changes
    # B and deletes C, and creates a new one.
    http("PATCH", f"{sim}/_sim/items/{quote(a)}", {"start": "2030-06-01T09:00:00Z",
                                                   "end": "2030-06-01T09:30:00Z"})
    moved_in = http("PATCH", f"{sim}/_sim/items/{quote(outside['id'])}",
                    {"start": "2030-03-20T09:00:00Z", "end": "2030-03-20T10:00:00Z"})[1]
    patched = graph("PATCH", f"{EVENTS}/{quote(b)}", {"subject": "Changed by the daemon"})[1]
    assert graph("DELETE", f"{EVENTS}/{quote(c)}")[0] == 204
    new = graph("POST", EVENTS, event(7, **at(25)))[1]
    entries, _, delta_link = delta_round(delta_link, bearer, page=2)
    found = by_id(entries)
    assert list(found) == [a, outside["id"], b, c, new["id"]]         # oldest change first
    removed = {"@odata.type": "#microsoft.graph.event", "@removed": {"reason": "deleted"}}
    assert found[a] == dict(removed, id=a) and found[c] == dict(removed, id=c)
    assert found[outside["id"]]["start"]["dateTime"] == "2030-03-20T09:00:00.0000000"
    assert found[outside["id"]]["changeKey"] == moved_in["change_key"]
    assert found[b]["@odata.etag"] == patched["@odata.etag"]       # the daemon's own change
    assert found[b]["subject"] == "Changed by the daemon"
    assert found[new["id"]]["@odata.etag"] == new["@odata.etag"]
    assert delta_round(delta_link, bearer)[0] == []
    # A person deleting one: removed; an item deleted before a first round is not listed.
    http("DELETE", f"{sim}/_sim/items/{quote(b)}")
    assert delta_round(delta_link, bearer)[0] == [dict(removed, id=b)]
    query = WINDOW.replace("startDateTime", "startdatetime").replace("endDateTime",
                                                                      "enddatetime")
    first_round = delta_round(events_delta(sim, query=query), bearer)[0]
    assert {e["id"] for e in first_round} == {outside["id"], new["id"]}


def test_delta_requests_refused(sim, graph, bearer):
    status, answer, _ = http("GET", events_delta(sim, query=""), headers=bearer)
    assert status == 400 and answer["error"]["code"] == "ErrorInvalidParameter"
    status, answer, _ = http("GET", events_delta(sim, query="startDateTime=soon&endDateTime=x"),
                             headers=bearer)
    assert status == 400
    status, answer, _ = http("GET", f"{sim}/v1.0{EVENTS}/delta", headers=bearer)
    assert status == 400 and "calendarView" in answer["error"]["message"]
    link = delta_round(events_delta(sim), bearer)[2]
    assert http("GET", link.replace("alice@", "bob@"), headers=bearer)[0] == 400
    assert http("GET", events_delta(sim, query="$deltatoken=made-up"), headers=bearer)[0] == 400
    tasks = default_tasks(graph)
    assert http("GET", f"{sim}/v1.0{tasks}/delta?$deltatoken={link.split('=')[-1]}",
                headers=bearer)[0] == 400      # an events token on a task list
    assert http("GET", events_delta(sim), headers={"Authorization": "Bearer x"})[0] == 401


def test_tasks_delta(sim, graph, bearer):
    tasks = default_tasks(graph)
    made = [graph("POST", tasks, todo_task(n))[1] for n in range(3)]
    url = f"{sim}/v1.0{tasks}/delta"
    entries, pages, delta_link = delta_round(url + "?$select=title,status", bearer, page=2)
    assert pages == 2 and [e["id"] for e in entries] == [t["id"] for t in made]
    assert set(entries[2]) == {"@odata.type", "@odata.etag", "id", "title", "status"}
    assert entries[0]["@odata.type"] == "#microsoft.graph.todoTask"
    entries, _, delta_link = delta_round(url, bearer)
    assert "completedDateTime" not in entries[0] and entries[0]["status"] == "notStarted"

    one, two, three = (t["id"] for t in made)
    edited = http("PATCH", f"{sim}/_sim/items/{quote(one)}", {"status": "Completed"})[1]
    patched = graph("PATCH", f"{tasks}/{quote(two)}",
                    {"dueDateTime": {"dateTime": "2030-05-09T00:00:00", "timeZone": "UTC"}})[1]
    assert graph("DELETE", f"{tasks}/{quote(three)}")[0] == 204
    found = by_id(delta_round(delta_link, bearer)[0])
    assert list(found) == [one, two, three]
    assert found[one]["status"] == "completed"
    assert found[one]["completedDateTime"]["timeZone"] == "UTC"
    assert found[one]["@odata.etag"] == f'W/"{edited["change_key"]}"'
    assert found[two]["@odata.etag"] == patched["@odata.etag"]
    assert found[two]["dueDateTime"]["dateTime"].startswith("2030-05-09T00:00:00")
    assert found[three] == {"@odata.type": "#microsoft.graph.todoTask", "id": three,
                            "@removed": {"reason": "deleted"}}
    # A replaced list: its delta link is gone with it.
    http("DELETE", sim + "/_sim/lists/bob@example.org")
    assert http("GET", delta_link, headers=bearer)[0] == 404


def test_delta_gone_after_expire_or_reset(sim, graph, bearer):
    graph("POST", EVENTS, event(1, **at(2)))
    graph("POST", EVENTS, event(2, **at(3)))
    alice = delta_round(events_delta(sim), bearer)[2]
    mid_round = http("GET", events_delta(sim), headers=dict(
        bearer, Prefer="odata.maxpagesize=1"))[1]["@odata.nextLink"]
    tasks = default_tasks(graph)
    bob = delta_round(f"{sim}/v1.0{tasks}/delta", bearer)[2]

    assert http("POST", sim + "/_sim/expire", {"mailbox": "Alice@example.org",
                                               "what": "delta"})[1] == \
        {"expired": "delta", "mailbox": "alice@example.org", "code": "syncStateNotFound"}
    for link in (alice, mid_round):
        status, answer, headers = http("GET", link, headers=bearer)
        assert status == 410 and answer["error"]["code"] == "syncStateNotFound"
        assert headers["Location"] == events_delta(sim)      # start over, same window
    entries, _, alice = delta_round(headers["Location"], bearer)
    assert len(entries) == 2
    assert http("GET", bob, headers=bearer)[0] == 200         # another mailbox: still fine

    http("POST", sim + "/_sim/expire", {"what": "delta", "code": "resyncRequired"})
    for link in (alice, bob):
        status, answer, headers = http("GET", link, headers=bearer)
        assert status == 410 and answer["error"]["code"] == "resyncRequired"
    assert headers["Location"] == f"{sim}/v1.0{tasks}/delta"
    stats = http("GET", sim + "/_sim/sync-stats")[1]
    assert stats["delta_gone"] == 4 and stats["changes"] == 2
    assert stats["delta_rounds_started"] == 4 and stats["delta_links_issued"] == 4
    for bad in ({"what": "delta", "code": "nope"}, {"what": "watermark"}):
        assert http("POST", sim + "/_sim/expire", bad)[0] == 400, bad
    fresh = delta_round(events_delta(sim), bearer)[2]
    http("POST", sim + "/_sim/reset")
    status, answer, _ = http("GET", fresh, headers=dict(
        bearer, Authorization="Bearer " + token(sim)[1]["access_token"]))
    assert status == 410 and answer["error"]["code"] == "syncStateNotFound"


def test_delta_in_a_batch(sim, graph):
    for n in range(2):
        graph("POST", EVENTS, event(n, **at(n + 1)))
    member = {"id": "1", "method": "GET",
              "url": f"/users/alice@example.org/calendarView/delta?{WINDOW}",
              "headers": {"Prefer": "odata.maxpagesize=1"}}
    status, answer, _ = graph("POST", "/$batch", {"requests": [member]})
    [response] = answer["responses"]
    assert status == 200 and response["status"] == 200
    assert len(response["body"]["value"]) == 1 and "@odata.nextLink" in response["body"]
    assert response["headers"]["Preference-Applied"] == "odata.maxpagesize=1"
