"""Tests of tests/sim/graph_sim.py itself: the token endpoint, bearer checks, events,
To Do lists and tasks, $filter lookups, $batch and faults, through real HTTP."""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

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
