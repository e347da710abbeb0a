"""Tests of ews_sim's change tracking (tests/sim/ews_sync.py): SyncFolderItems with sync
states, pull and streaming subscriptions, their errors and expiry, the affinity cookie,
and the control calls (/_sim/expire, /_sim/sync-stats, /_sim/subscriptions).

Run:  FOLLOWUPD_EWS_SCHEMA=/work/shared/ews-schema /usr/bin/python3 -m pytest -q tests/sim

Every SOAP answer is checked against Microsoft's schema (streamed envelopes after
renaming the two elements real servers put in another namespace than the schema).
Waits are on conditions with deadlines, never bare sleeps.
"""

import socket
import time
import urllib.parse
from xml.sax.saxutils import escape, quoteattr

import pytest
from lxml import etree

import ews_sim
from test_ews_sim import (NS, calendar_item, control_status, create_one, envelope, ext_uri,
                          needs_schema, set_field, task_item, update)
# test_ews_sim's fixtures, used here under the same names (a simulator per module).
from test_ews_sim import clean_sim, sim, soap, validator  # noqa: F401
from pgcluster import wait_for  # tests/integration, on sys.path through test_ews_sim

M, T = ews_sim.M, ews_sim.T
MAILBOX = "user@example.com"


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

def sync_items(folder="calendar", state=None, max_changes=100, mailbox=MAILBOX, ignore=(),
               folder_mailbox=None, shape="IdOnly"):
    target = (f'<t:DistinguishedFolderId Id="{folder}"><t:Mailbox><t:EmailAddress>'
              f'{folder_mailbox}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>'
              if folder_mailbox else f'<t:DistinguishedFolderId Id="{folder}"/>')
    fields = {"calendar": ("calendar:Start", "calendar:End"),
              "tasks": ("task:Status", "task:DueDate", "task:CompleteDate")}.get(folder, ())
    props = "".join(f'<t:FieldURI FieldURI="{f}"/>' for f in fields) + ext_uri()
    ignored = "".join(f"<t:ItemId Id={quoteattr(i)}/>" for i in ignore)
    return envelope(f"""<m:SyncFolderItems>
      <m:ItemShape><t:BaseShape>{shape}</t:BaseShape>
        <t:AdditionalProperties>{props}</t:AdditionalProperties></m:ItemShape>
      <m:SyncFolderId>{target}</m:SyncFolderId>
      {"" if state is None else f"<m:SyncState>{escape(state)}</m:SyncState>"}
      {f"<m:Ignore>{ignored}</m:Ignore>" if ignore else ""}
      <m:MaxChangesReturned>{max_changes}</m:MaxChangesReturned>
      <m:SyncScope>NormalItems</m:SyncScope></m:SyncFolderItems>""", mailbox)


EVENTS = ("CreatedEvent", "ModifiedEvent", "DeletedEvent", "MovedEvent")


def subscribe(kind="pull", folders=("calendar", "tasks"), mailbox=MAILBOX, timeout=10,
              watermark=None, events=EVENTS):
    ids = "".join(f'<t:DistinguishedFolderId Id="{f}"/>' for f in folders)
    types = "".join(f"<t:EventType>{e}</t:EventType>" for e in events)
    resume = f"<t:Watermark>{watermark}</t:Watermark>" if watermark else ""
    extra = f"<t:Timeout>{timeout}</t:Timeout>" if kind == "pull" else ""
    tag = {"pull": "PullSubscriptionRequest", "streaming": "StreamingSubscriptionRequest"}[kind]
    if kind == "streaming":
        resume = ""
    return envelope(f"""<m:Subscribe><m:{tag}><t:FolderIds>{ids}</t:FolderIds>
      <t:EventTypes>{types}</t:EventTypes>{resume}{extra}</m:{tag}></m:Subscribe>""", mailbox)


def get_events(sub_id, watermark, mailbox=MAILBOX):
    return envelope(f"""<m:GetEvents><m:SubscriptionId>{sub_id}</m:SubscriptionId>
      <m:Watermark>{watermark}</m:Watermark></m:GetEvents>""", mailbox)


def unsubscribe(sub_id, mailbox=MAILBOX):
    return envelope(f"<m:Unsubscribe><m:SubscriptionId>{sub_id}</m:SubscriptionId>"
                    "</m:Unsubscribe>", mailbox)


def streaming_request(sub_ids, minutes=1, mailbox=MAILBOX):
    ids = "".join(f"<t:SubscriptionId>{i}</t:SubscriptionId>" for i in sub_ids)
    return envelope(f"""<m:GetStreamingEvents><m:SubscriptionIds>{ids}</m:SubscriptionIds>
      <m:ConnectionTimeout>{minutes}</m:ConnectionTimeout></m:GetStreamingEvents>""", mailbox)


def control_path(item_id):
    return "/_sim/items/" + urllib.parse.quote(item_id, safe="")


# ---------------------------------------------------------------------------
# Reading answers
# ---------------------------------------------------------------------------

def message(reply):
    [msg] = reply.messages()
    return msg


def changes(reply):
    """[(Create|Update|Delete, item id, change key or None, {field: text})]."""
    found = []
    for change in message(reply).find("m:Changes", NS):
        kind = etree.QName(change).localname
        item = change[0]
        item_id = (item if kind == "Delete" else item.find("t:ItemId", NS))
        fields = {etree.QName(f).localname: f.text for f in item if kind != "Delete"}
        fields.pop("ItemId", None)
        value = item.findtext(".//t:ExtendedProperty/t:Value", namespaces=NS)
        if value is not None:
            fields["tag"] = value
        found.append((kind, item_id.get("Id"), item_id.get("ChangeKey"), fields))
    return found


def sync_state(reply):
    return message(reply).findtext("m:SyncState", namespaces=NS)


def last_in_range(reply):
    return message(reply).findtext("m:IncludesLastItemInRange", namespaces=NS)


def subscribed(reply):
    msg = message(reply)
    assert reply.codes() == ["NoError"], reply.data
    return msg.findtext("m:SubscriptionId", namespaces=NS), msg.findtext("m:Watermark",
                                                                        namespaces=NS)


def events_of(notification):
    """[(event type, item or folder id, change key, extra)] of a t:/m:Notification."""
    found = []
    for event in notification:
        name = etree.QName(event).localname
        if name in ("SubscriptionId", "PreviousWatermark", "MoreEvents"):
            continue
        target = event.find("t:ItemId", NS)
        if target is None:
            target = event.find("t:FolderId", NS)
        old = event.find("t:OldItemId", NS)
        found.append((name, None if target is None else target.get("Id"),
                      None if target is None else target.get("ChangeKey"),
                      None if old is None else old.get("Id")))
    return found


def pull(soap, sub_id, watermark):
    """(events, new watermark, MoreEvents) of one GetEvents."""
    reply = soap(get_events(sub_id, watermark))
    assert reply.codes() == ["NoError"], reply.data
    note = message(reply).find("m:Notification", NS)
    assert note.findtext("t:SubscriptionId", namespaces=NS) == sub_id
    assert note.findtext("t:PreviousWatermark", namespaces=NS) == watermark
    marks = note.xpath("./*/t:Watermark", namespaces=NS)
    return events_of(note), marks[-1].text, note.findtext("t:MoreEvents", namespaces=NS)


def item_events(events):
    """Item events only (folder ModifiedEvents have a FolderId, not an ItemId)."""
    return [e for e in events if not (e[0] == "ModifiedEvent" and e[1] and e[2] == "AQAAAA==")]


class Stream:
    """A GetStreamingEvents answer read on a raw socket, chunk by chunk (one SOAP
    envelope per chunk, as Exchange sends them)."""

    def __init__(self, sim, body: bytes, headers=None, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", sim.port), timeout=timeout)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: sim\r\n"
                          f"Content-Type: text/xml; charset=utf-8\r\n{extra}"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self.buffer = b""
        status = self._line()
        self.status = int(status.split()[1])
        self.headers = {}
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.decode().partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.ended = False

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def envelope(self, timeout=5):
        """The next envelope's root element, or None at the end of the chunked body."""
        self.sock.settimeout(timeout)
        size = int(self._line().split(b";")[0], 16)
        if size == 0:
            self._line()
            self.ended = True
            return None
        while len(self.buffer) < size + 2:
            self._fill()
        chunk, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        assert not chunk.startswith(b"<?xml")       # documents follow each other
        return etree.fromstring(chunk)

    def close(self):
        self.sock.close()


def stream_message(root):
    [msg] = root.xpath("/s:Envelope/s:Body/m:GetStreamingEventsResponse/m:ResponseMessages/*",
                       namespaces=NS)
    return msg


def connection_status(root):
    return stream_message(root).findtext("m:ConnectionStatus", namespaces=NS)


def notifications(root):
    """{subscription id: events} of a streamed envelope (real servers: m:Notification)."""
    found = {}
    for note in stream_message(root).xpath("m:Notifications/m:Notification", namespaces=NS):
        found.setdefault(note.findtext("t:SubscriptionId", namespaces=NS), []).extend(
            events_of(note))
    return found


def stream_errors(root):
    msg = stream_message(root)
    ids = [e.text for e in msg.xpath("m:ErrorSubscriptionIds/*", namespaces=NS)]
    return msg.findtext("m:ResponseCode", namespaces=NS), ids


def schema_valid(validator, root):
    """Validates a streamed envelope as the schema spells it (t:Notification, and
    t:SubscriptionId in ErrorSubscriptionIds): the only difference real servers make."""
    if validator is None:
        return
    copy = etree.fromstring(etree.tostring(root))
    for elem in copy.iter(M("Notification")):
        elem.tag = T("Notification")
    for elem in copy.xpath("//m:ErrorSubscriptionIds/m:SubscriptionId", namespaces=NS):
        elem.tag = T("SubscriptionId")
    assert validator.errors(copy) == [], etree.tostring(root)


def next_notification(stream, validator, deadline_s=5):
    """The next streamed envelope that carries notifications (heartbeats skipped)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        root = stream.envelope(timeout=max(0.1, deadline - time.monotonic()))
        assert root is not None, "the stream ended"
        schema_valid(validator, root)
        if notifications(root):
            return root
    pytest.fail(f"no notification within {deadline_s}s")


def settings(sim, **values):
    return sim.control("POST", "/_sim/settings", values)


# ---------------------------------------------------------------------------
# SyncFolderItems
# ---------------------------------------------------------------------------

def test_sync_folder_items_first_sync_then_changes(sim, soap):
    first, _ = create_one(soap, calendar_item("contactlog:1:appointment"))
    second, _ = create_one(soap, calendar_item("contactlog:2:appointment"))
    create_one(soap, task_item(), folder="tasks")
    reply = soap(sync_items())
    assert reply.codes() == ["NoError"] and last_in_range(reply) == "true"
    found = changes(reply)
    assert [(c[0], c[1]) for c in found] == [("Create", first), ("Create", second)]
    assert found[0][3] == {"tag": "contactlog:1:appointment", "Start": "2025-03-01T09:00:00Z",
                           "End": "2025-03-01T09:30:00Z", "ExtendedProperty": None}
    state = sync_state(reply)
    reply = soap(sync_items(state=state))                  # nothing since
    assert changes(reply) == [] and last_in_range(reply) == "true"

    # A person moves the first one in Outlook; the daemon updates the second; the
    # daemon creates a third; a person deletes the second (to Deleted Items).
    edited = sim.control("PATCH", control_path(first), {"start": "2025-03-04T10:00:00Z",
                                                        "end": "2025-03-04T10:30:00Z"})
    reply = soap(update(second, set_field("item:Subject", "<t:Subject>x</t:Subject>")))
    own_key = reply.item_ids()[0][1]
    third, third_key = create_one(soap, calendar_item("contactlog:3:appointment"))
    found = changes(soap(sync_items(state=state)))
    assert [(c[0], c[1], c[2]) for c in found] == [
        ("Update", first, edited["change_key"]), ("Update", second, own_key),
        ("Create", third, third_key)]
    assert found[0][3]["Start"] == "2025-03-04T10:00:00Z"
    sim.control("DELETE", control_path(second))
    reply = soap(sync_items(state=state))
    assert [(c[0], c[1]) for c in changes(reply)] == [
        ("Update", first), ("Delete", second), ("Create", third)]
    # From the newest state, only the delete.
    found = changes(soap(sync_items(state=sync_state(soap(sync_items(state=state))))))
    assert found == []


def test_sync_folder_items_tasks_status_and_complete_date(sim, soap):
    task_id, _ = create_one(soap, task_item(), folder="tasks")
    state = sync_state(soap(sync_items("tasks")))
    sim.control("PATCH", control_path(task_id), {"status": "Completed",
                                                 "due_date": "2025-03-08T09:00:00Z"})
    [(kind, item_id, _, fields)] = changes(soap(sync_items("tasks", state=state)))
    assert (kind, item_id) == ("Update", task_id)
    assert fields["Status"] == "Completed" and fields["DueDate"] == "2025-03-08T09:00:00Z"
    assert fields["CompleteDate"].endswith("Z") and fields["tag"] == "contactlog:1:task"
    assert sim.control("GET", control_path(task_id))["complete_date"] == fields["CompleteDate"]
    # Every property, in schema order (the soap fixture validates the answer).
    [(_, _, _, fields)] = changes(soap(sync_items("tasks", state=state, shape="AllProperties")))
    assert fields["Subject"] == "Call Ann" and fields["PercentComplete"] == "100"
    sim.control("PATCH", control_path(task_id), {"status": "InProgress"})
    [(_, _, _, fields)] = changes(soap(sync_items("tasks", state=state)))
    assert fields["Status"] == "InProgress" and "CompleteDate" not in fields
    # The daemon completing it through UpdateItem comes back too.
    reply = soap(update(task_id, set_field("task:Status", "<t:Status>Completed</t:Status>",
                                           kind="Task")))
    [(_, _, key, fields)] = changes(soap(sync_items("tasks", state=state)))
    assert key == reply.item_ids()[0][1] and fields["Status"] == "Completed"
    assert "CompleteDate" in fields


def test_sync_folder_items_paging_ignore_and_delegate_access(sim, soap):
    ids = [create_one(soap, calendar_item(f"contactlog:{n}:appointment"))[0] for n in range(5)]
    seen, state, pages = [], None, []
    while True:
        reply = soap(sync_items(state=state, max_changes=2))
        found = changes(reply)
        assert len(found) <= 2
        pages.append(last_in_range(reply))
        seen += [c[1] for c in found]
        state = sync_state(reply)
        if pages[-1] == "true":
            break
        if len(pages) == 2:     # a change between pages arrives on a later page
            sim.control("PATCH", control_path(ids[0]), {"subject": "Changed between pages"})
    assert pages == ["false", "false", "true"]
    assert seen[:5] == ids and seen[5:] == [ids[0]]
    assert changes(soap(sync_items(state=state))) == []

    # Ignore leaves items out; a delegate (no impersonation) names the mailbox.
    reply = soap(sync_items(ignore=ids[:4], mailbox=None, folder_mailbox=MAILBOX))
    assert [c[1] for c in changes(reply)] == ids[4:]
    assert sim.requests()[-1]["impersonation"] is False


def test_sync_state_errors(sim, soap):
    create_one(soap)
    state = sync_state(soap(sync_items()))
    other = sync_state(soap(sync_items(mailbox="boss@example.com")))
    for bad, folder in (("bm90IG91cnM=", "calendar"), ("%%%", "calendar"),
                        (state, "tasks"), (other, "calendar")):
        reply = soap(sync_items(folder, state=bad))
        assert reply.codes() == ["ErrorInvalidSyncStateData"], (bad, folder)
        msg = message(reply)
        assert msg.get("ResponseClass") == "Error"
        assert msg.find("m:SyncState", NS) is not None and not sync_state(reply)
    assert soap(sync_items(state=state)).codes() == ["NoError"]

    assert sim.control("POST", "/_sim/expire", {"mailbox": "User@Example.com",
                                                "what": "sync_state"}) == \
        {"expired": "sync_state", "mailbox": MAILBOX}
    assert soap(sync_items(state=state)).codes() == ["ErrorInvalidSyncStateData"]
    reply = soap(sync_items(mailbox="boss@example.com", state=other))
    assert reply.codes() == ["NoError"]               # another mailbox keeps its states
    reply = soap(sync_items())                         # starting over works
    assert reply.codes() == ["NoError"] and len(changes(reply)) == 1
    fresh = sync_state(reply)
    sim.control("POST", "/_sim/expire", {"what": "sync_state"})      # every mailbox
    assert soap(sync_items(state=fresh)).codes() == ["ErrorInvalidSyncStateData"]
    state = sync_state(soap(sync_items()))
    sim.control("POST", "/_sim/reset")
    assert soap(sync_items(state=state)).codes() == ["ErrorInvalidSyncStateData"]
    for bad in ({"mailbox": MAILBOX, "what": "delta"}, {"what": "everything"}, [1],
                {"mailbox": 5, "what": "watermark"}):
        assert control_status(sim, "POST", "/_sim/expire", bad)[0] == 400, bad


@needs_schema
def test_new_requests_are_schema_checked(sim, soap):
    for body in (sync_items(max_changes=0), sync_items(max_changes=513),
                 subscribe(timeout=0), subscribe(timeout=1441), subscribe(events=()),
                 subscribe(events=("SomethingHappened",)), streaming_request(["x"], minutes=31),
                 streaming_request([]), get_events("x", "")):
        reply = soap(body)
        assert reply.status == 500 and reply.fault_code() == "a:ErrorSchemaValidation", body
    ops = {r["op"] for r in sim.requests()}
    assert ops == {"SyncFolderItems", "Subscribe", "GetStreamingEvents", "GetEvents"}
    assert len(sim.control("GET", "/_sim/errors")) == 9


# ---------------------------------------------------------------------------
# Pull subscriptions and GetEvents
# ---------------------------------------------------------------------------

def test_pull_notifications_for_every_kind_of_change(sim, soap):
    sub_id, watermark = subscribed(soap(subscribe()))
    events, mark, more = pull(soap, sub_id, watermark)
    assert [e[0] for e in events] == ["StatusEvent"] and more == "false"
    assert pull(soap, sub_id, mark)[0][0][0] == "StatusEvent"   # still nothing

    appointment, key = create_one(soap)                          # the daemon creates
    events, mark2, _ = pull(soap, sub_id, mark)
    assert events[0] == ("CreatedEvent", appointment, key, None)
    assert events[1][0] == "ModifiedEvent" and events[1][2] == "AQAAAA=="   # the folder
    assert pull(soap, sub_id, mark)[0] == events                # a retry replays

    edited = sim.control("PATCH", control_path(appointment), {"start": "2025-03-05T08:00:00Z",
                                                              "end": "2025-03-05T09:00:00Z"})
    reply = soap(update(appointment, set_field("item:Subject", "<t:Subject>y</t:Subject>")))
    own_key = reply.item_ids()[0][1]
    task, _ = create_one(soap, task_item(), folder="tasks")
    moved = sim.control("POST", control_path(task) + "/move")["id"]
    events, mark3, _ = pull(soap, sub_id, mark2)
    task_key = sim.control("GET", control_path(moved))["change_key"]
    assert item_events(events) == [
        ("ModifiedEvent", appointment, edited["change_key"], None),   # a person's edit
        ("ModifiedEvent", appointment, own_key, None),               # the daemon's own
        ("CreatedEvent", task, task_key, None),
        ("MovedEvent", moved, task_key, task)]                       # same folder, new id
    assert [e[0] for e in events].count("ModifiedEvent") == 3        # + the tasks folder
    # Older than the last watermark asked with: gone.
    assert soap(get_events(sub_id, mark)).codes() == ["ErrorInvalidWatermark"]

    reply = soap(ews_sim_delete(appointment, "MoveToDeletedItems"))
    assert reply.codes() == ["NoError"]
    sim.control("DELETE", control_path(moved) + "?hard=1")     # Shift+Del in Outlook
    events, _, _ = pull(soap, sub_id, mark3)
    assert [(e[0], e[3]) for e in item_events(events)] == [("MovedEvent", appointment),
                                                           ("DeletedEvent", None)]
    assert events[0][1] != appointment        # a new id in Deleted Items
    assert item_events(events)[1][1] == moved


def test_pull_subscription_to_all_folders(sim, soap):
    reply = soap(envelope("""<m:Subscribe><m:PullSubscriptionRequest
        SubscribeToAllFolders="true"><t:EventTypes><t:EventType>MovedEvent</t:EventType>
        <t:EventType>ModifiedEvent</t:EventType></t:EventTypes><t:Timeout>5</t:Timeout>
        </m:PullSubscriptionRequest></m:Subscribe>"""))
    sub_id, mark = subscribed(reply)
    item_id, _ = create_one(soap)
    assert soap(ews_sim_delete(item_id, "MoveToDeletedItems")).codes() == ["NoError"]
    events, _, _ = pull(soap, sub_id, mark)
    # The calendar's count changed twice, Deleted Items' once; no CreatedEvent asked for.
    assert [e[0] for e in events] == ["ModifiedEvent", "MovedEvent", "ModifiedEvent",
                                      "ModifiedEvent"]
    assert events[1][3] == item_id
    folders = [e[1] for e in events if e[0] == "ModifiedEvent"]
    assert folders[0] == folders[1] != folders[2]


def ews_sim_delete(item_id, delete_type):
    return envelope(f"""<m:DeleteItem DeleteType="{delete_type}"
        SendMeetingCancellations="SendToNone" AffectedTaskOccurrences="AllOccurrences">
        <m:ItemIds><t:ItemId Id={quoteattr(item_id)}/></m:ItemIds></m:DeleteItem>""")


def test_pull_more_events_folders_and_event_types(sim, soap):
    settings(sim, events_per_notification=3)
    sub_id, mark = subscribed(soap(subscribe(folders=("tasks",), events=("CreatedEvent",))))
    create_one(soap)                                             # calendar: not watched
    tasks = [create_one(soap, task_item(f"contactlog:{n}:task"), folder="tasks")[0]
             for n in range(4)]
    sim.control("PATCH", control_path(tasks[0]), {"subject": "not subscribed to"})
    seen, more = [], "true"
    while more == "true":
        events, mark, more = pull(soap, sub_id, mark)
        seen += [e for e in events if e[0] != "StatusEvent"]
    assert [(e[0], e[1]) for e in seen] == [("CreatedEvent", t) for t in tasks]


def test_pull_subscription_errors_and_expiry(sim, soap):
    settings(sim, notification_minute_s=0.3)
    sub_id, mark = subscribed(soap(subscribe(timeout=1)))
    assert pull(soap, sub_id, mark)[0][0][0] == "StatusEvent"
    # Not asked within its Timeout (one "minute" = 0.3 s here): expired. (Asking keeps
    # it alive, so the wait looks at the control API.)
    wait_for(lambda: {s["id"]: s["status"] for s in sim.control(
        "GET", "/_sim/subscriptions")}[sub_id] == "expired", timeout=5, what="the subscription to expire")
    assert soap(get_events(sub_id, mark)).codes() == ["ErrorExpiredSubscription"]
    sub_id, mark = subscribed(soap(subscribe(timeout=60)))
    assert soap(get_events("bm9uZQ==", mark)).codes() == ["ErrorSubscriptionNotFound"]
    assert soap(get_events(sub_id, "bm9uZQ==")).codes() == ["ErrorInvalidWatermark"]
    stream_id, _ = subscribed(soap(subscribe("streaming")))
    assert soap(get_events(stream_id, mark)).codes() == ["ErrorInvalidPullSubscriptionId"]

    answer = sim.control("POST", "/_sim/expire", {"mailbox": MAILBOX, "what": "watermark"})
    assert answer == {"expired": "watermark", "mailbox": MAILBOX}
    assert soap(get_events(sub_id, mark)).codes() == ["ErrorInvalidWatermark"]
    assert soap(subscribe(watermark=mark)).codes() == ["ErrorInvalidWatermark"]

    sub_id, mark = subscribed(soap(subscribe(timeout=60)))
    item_id, key = create_one(soap)
    # Resuming from a watermark in a new subscription gets what happened since.
    resumed, resumed_mark = subscribed(soap(subscribe(watermark=mark)))
    assert resumed_mark == mark
    assert pull(soap, resumed, mark)[0][0] == ("CreatedEvent", item_id, key, None)

    assert sim.control("POST", "/_sim/expire", {"mailbox": MAILBOX, "what": "subscriptions"}) \
        == {"expired": "subscriptions", "mailbox": MAILBOX, "count": 4}
    assert soap(get_events(sub_id, mark)).codes() == ["ErrorExpiredSubscription"]
    sub_id, mark = subscribed(soap(subscribe(timeout=60)))
    assert soap(unsubscribe(sub_id)).codes() == ["NoError"]
    assert soap(get_events(sub_id, mark)).codes() == ["ErrorSubscriptionNotFound"]
    assert soap(unsubscribe(sub_id)).codes() == ["ErrorSubscriptionNotFound"]
    states = {s["id"]: s["status"] for s in sim.control("GET", "/_sim/subscriptions")}
    assert states[sub_id] == "unsubscribed" and states[resumed] == "expired"
    reply = soap(envelope("""<m:Subscribe><m:PullSubscriptionRequest><t:FolderIds>
        <t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>a@example.com
        </t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>
        <t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>b@example.com
        </t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></t:FolderIds>
        <t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes>
        <t:Timeout>5</t:Timeout></m:PullSubscriptionRequest></m:Subscribe>""", None))
    assert reply.codes() == ["ErrorInvalidSubscriptionRequest"]


# ---------------------------------------------------------------------------
# Streaming subscriptions and GetStreamingEvents
# ---------------------------------------------------------------------------

def test_streaming_delivers_an_edit_within_a_second(sim, soap, validator):
    mine, _ = create_one(soap)
    theirs, _ = create_one(soap, mailbox="boss@example.com")
    sub_mine, _ = subscribed(soap(subscribe("streaming")))
    sub_theirs, _ = subscribed(soap(subscribe("streaming", mailbox="boss@example.com")))
    # Many mailboxes' subscriptions on one connection (impersonating one of them).
    stream = Stream(sim, streaming_request([sub_mine, sub_theirs], minutes=5),
                    {"X-AnchorMailbox": MAILBOX})
    try:
        assert stream.status == 200 and stream.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in stream.headers
        first = stream.envelope()
        schema_valid(validator, first)
        assert connection_status(first) == "OK"
        wait_for(lambda: sim.control("GET", "/_sim/sync-stats")["streaming_connections"]
                   == 1, timeout=5, what="the stream to be registered")

        started = time.monotonic()
        edited = sim.control("PATCH", control_path(theirs), {"start": "2025-03-06T08:00:00Z",
                                                             "end": "2025-03-06T08:30:00Z"})
        root = next_notification(stream, validator, deadline_s=1)
        assert time.monotonic() - started < 1.0
        assert notifications(root) == {sub_theirs: [("ModifiedEvent", theirs,
                                                     edited["change_key"], None)]}
        # Real servers: m:Notification, t:SubscriptionId inside.
        assert root.find(".//m:Notifications/m:Notification/t:SubscriptionId", NS) is not None

        # The daemon's own change comes too, with the ChangeKey UpdateItem answered.
        reply = soap(update(mine, set_field("item:Subject", "<t:Subject>z</t:Subject>")))
        own_key = reply.item_ids()[0][1]
        root = next_notification(stream, validator, deadline_s=1)
        assert notifications(root) == {sub_mine: [("ModifiedEvent", mine, own_key, None)]}
        stats = sim.control("GET", "/_sim/sync-stats")
        assert stats["streaming_connections"] == 1 and stats["subscriptions"] == 2
        assert stats["subscriptions_on_connections"] == 2
        assert stats["max_subscriptions_per_connection"] == 2
        assert stats["subscribed_mailboxes"] == 2 and stats["streaming_subscriptions"] == 2
    finally:
        stream.close()
    # The server notices the client is gone and frees the connection.
    wait_for(lambda: sim.control("GET", "/_sim/sync-stats")["streaming_connections"] == 0,
               timeout=5, what="the closed stream to be noticed")
    stats = sim.control("GET", "/_sim/sync-stats")
    assert stats["streaming_connections_peak"] == 1 and stats["streaming_connections_opened"] == 1


def test_streaming_heartbeats_timeout_and_events_kept_between_connections(sim, soap,
                                                                          validator):
    settings(sim, notification_minute_s=1.0, streaming_heartbeat_s=0.25)
    sub_id, _ = subscribed(soap(subscribe("streaming")))
    item_id, key = create_one(soap)          # before any connection: kept for the first
    stream = Stream(sim, streaming_request([sub_id], minutes=1))
    try:
        started = time.monotonic()
        first = stream.envelope()
        schema_valid(validator, first)
        assert connection_status(first) == "OK" and notifications(first) == {}
        waiting = stream.envelope()
        schema_valid(validator, waiting)
        assert notifications(waiting) == {sub_id: [("CreatedEvent", item_id, key, None),
                                                   ("ModifiedEvent", waiting.find(
                                                       ".//t:FolderId", NS).get("Id"),
                                                    "AQAAAA==", None)]}
        statuses = []
        while True:
            root = stream.envelope(timeout=5)
            if root is None:
                break
            schema_valid(validator, root)
            statuses.append(connection_status(root))
        elapsed = time.monotonic() - started
        assert statuses[-1] == "Closed" and set(statuses[:-1]) == {"OK"}
        assert len(statuses) >= 3                     # heartbeats every 0.25 s
        assert 0.9 <= elapsed < 3.0                   # ConnectionTimeout 1 "minute" = 1 s
        # The connection stays usable after the chunked body ended.
        body = sync_items()
        stream.sock.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: sim\r\n"
                            b"Content-Type: text/xml; charset=utf-8\r\nContent-Length: %d"
                            b"\r\n\r\n%s" % (len(body), body))
        assert b" 200 " in stream._line()
    finally:
        stream.close()
    # Not sent twice: a new connection starts after what the first one delivered (the
    # create of item_id), so its first notification is the next change.
    stream = Stream(sim, streaming_request([sub_id], minutes=1))
    try:
        assert connection_status(stream.envelope()) == "OK"
        edited = sim.control("PATCH", control_path(item_id), {"subject": "Edited"})
        root = next_notification(stream, validator)
        assert notifications(root) == {sub_id: [("ModifiedEvent", item_id,
                                                 edited["change_key"], None)]}
    finally:
        stream.close()


def test_streaming_errors_expiry_and_takeover(sim, soap, validator):
    sub_a, _ = subscribed(soap(subscribe("streaming")))
    sub_b, _ = subscribed(soap(subscribe("streaming")))
    pull_id, _ = subscribed(soap(subscribe()))
    # Nothing valid at all: an error envelope, then Closed, then the end.
    stream = Stream(sim, streaming_request(["bm9uZQ==", pull_id]))
    try:
        codes, roots = {}, []
        while True:
            root = stream.envelope()
            if root is None:
                break
            schema_valid(validator, root)
            roots.append(root)
            code, ids = stream_errors(root)
            if code != "NoError":
                codes[code] = ids
                assert stream_message(root).get("ResponseClass") == "Error"
                assert root.find(".//m:ErrorSubscriptionIds/m:SubscriptionId", NS) is not None
        assert codes == {"ErrorSubscriptionNotFound": ["bm9uZQ=="],
                         "ErrorInvalidSubscription": [pull_id]}
        assert len(roots) == 3 and connection_status(roots[-1]) == "Closed"
    finally:
        stream.close()

    old = Stream(sim, streaming_request([sub_a, sub_b]))
    try:
        assert connection_status(old.envelope()) == "OK"
        # A newer connection takes sub_b over: the old one says so and keeps sub_a.
        new = Stream(sim, streaming_request([sub_b]))
        try:
            assert connection_status(new.envelope()) == "OK"
            root = old.envelope()
            schema_valid(validator, root)
            assert stream_errors(root) == ("ErrorNewEventStreamConnectionOpened", [sub_b])
            # Expiry while connected: reported at once; the connection is then empty.
            started = time.monotonic()
            answer = sim.control("POST", "/_sim/expire", {"what": "subscriptions"})
            assert answer["count"] == 3
            for stream, sub_id in ((old, sub_a), (new, sub_b)):
                root = stream.envelope(timeout=2)
                assert stream_errors(root) == ("ErrorExpiredSubscription", [sub_id])
                assert connection_status(stream.envelope(timeout=2)) == "Closed"
                assert stream.envelope() is None
            assert time.monotonic() - started < 1.5
        finally:
            new.close()
    finally:
        old.close()
    sub_c, _ = subscribed(soap(subscribe("streaming")))
    stream = Stream(sim, streaming_request([sub_a, sub_c]))
    try:
        root = stream.envelope()
        assert stream_errors(root) == ("ErrorExpiredSubscription", [sub_a])
        assert connection_status(stream.envelope()) == "OK"
        assert soap(unsubscribe(sub_c)).codes() == ["NoError"]
        assert stream_errors(stream.envelope(timeout=2)) == ("ErrorSubscriptionUnsubscribed",
                                                            [sub_c])
        assert connection_status(stream.envelope(timeout=2)) == "Closed"
    finally:
        stream.close()


def test_streaming_subscription_expires_without_a_connection(sim, soap):
    settings(sim, notification_minute_s=0.02)      # its 30 idle "minutes" = 0.6 s
    sub_id, _ = subscribed(soap(subscribe("streaming")))
    assert sim.control("GET", "/_sim/sync-stats")["streaming_subscriptions"] == 1
    wait_for(lambda: sim.control("GET", "/_sim/sync-stats")["expired_subscriptions"] == 1,
               timeout=5, what="the idle streaming subscription to expire")
    stream = Stream(sim, streaming_request([sub_id]))
    try:
        assert stream_errors(stream.envelope()) == ("ErrorExpiredSubscription", [sub_id])
    finally:
        stream.close()


def test_streaming_schema_namespaces_setting(sim, soap, validator):
    settings(sim, streaming_schema_namespaces=True)
    sub_id, _ = subscribed(soap(subscribe("streaming")))
    stream = Stream(sim, streaming_request([sub_id, "bm9uZQ=="]))
    try:
        root = stream.envelope()
        assert root.find(".//m:ErrorSubscriptionIds/t:SubscriptionId", NS) is not None
        if validator is not None:
            assert validator.errors(root) == []        # as the schema has it, untouched
        create_one(soap)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            root = stream.envelope()
            if root.find(".//m:Notifications", NS) is not None:
                break
        assert root.find(".//m:Notifications/t:Notification", NS) is not None
        if validator is not None:
            assert validator.errors(root) == []
    finally:
        stream.close()


def test_fault_drops_a_stream_after_its_first_envelope(sim, soap):
    sub_id, _ = subscribed(soap(subscribe("streaming")))
    sim.fault(mode="drop_after_perform", ops=["GetStreamingEvents"])
    stream = Stream(sim, streaming_request([sub_id]))
    try:
        assert connection_status(stream.envelope()) == "OK"
        with pytest.raises((EOFError, ConnectionError)):
            stream.envelope()
    finally:
        stream.close()
    [record] = [r for r in sim.requests() if r["op"] == "GetStreamingEvents"]
    assert record["fault"] == "drop_after_perform" and record["http_status"] == 200


# ---------------------------------------------------------------------------
# Affinity: X-AnchorMailbox, X-PreferServerAffinity, X-BackEndOverrideCookie
# ---------------------------------------------------------------------------

def server_of(sim, sub_id):
    return {s["id"]: s["server"] for s in sim.control("GET", "/_sim/subscriptions")}[sub_id]


def test_affinity_cookie_groups_subscriptions_on_one_server(sim, soap):
    settings(sim, mailbox_servers=4)
    boxes = [f"user{n}@example.com" for n in range(12)]
    anchor = boxes[0]
    affinity = {"X-AnchorMailbox": anchor, "X-PreferServerAffinity": "true"}
    reply = soap(subscribe("streaming", mailbox=anchor), headers=affinity)
    cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith("X-BackEndOverrideCookie=EXSIM") and "HttpOnly" in cookie
    assert "secure" not in cookie                     # plain http on loopback
    value = cookie.split(";")[0].split("=", 1)[1]
    with_cookie = dict(affinity, Cookie=f"X-BackEndOverrideCookie={value}")
    subs = [subscribed(reply)[0]]
    for box in boxes[1:]:
        reply = soap(subscribe("streaming", mailbox=box), headers=with_cookie)
        assert "Set-Cookie" not in reply.headers       # the client keeps the first one
        subs.append(subscribed(reply)[0])
    server = value.split("~")[0]
    assert {server_of(sim, s) for s in subs} == {server}
    record = sim.requests()[-1]
    assert record["prefer_server_affinity"] == "true"
    assert record["backend_override_cookie"] == value

    # Without affinity, subscriptions land where each mailbox lives.
    loose = [subscribed(soap(subscribe("streaming", mailbox=b)))[0] for b in boxes]
    assert len({server_of(sim, s) for s in loose}) > 1

    # One connection for the group, with the cookie: all there.
    stream = Stream(sim, streaming_request(subs, mailbox=boxes[3]), with_cookie)
    try:
        root = stream.envelope()
        assert stream_errors(root)[0] == "NoError" and connection_status(root) == "OK"
        stats = sim.control("GET", "/_sim/sync-stats")
        assert stats["subscriptions_on_connections"] == 12
        assert stats["subscriptions_by_server"][server] >= 12
    finally:
        stream.close()
    # Without the cookie the request reaches another server, which does not know most.
    stream = Stream(sim, streaming_request(loose, mailbox=anchor), {"X-AnchorMailbox": anchor})
    try:
        root = stream.envelope()
        code, missing = stream_errors(root)
        assert code == "ErrorSubscriptionNotFound"
        assert set(missing) == {s for s in loose if server_of(sim, s) != server_of(sim,
                                                                                   loose[0])}
    finally:
        stream.close()
    # Pull subscriptions: the same routing for GetEvents.
    sub_id, mark = subscribed(soap(subscribe(mailbox=anchor), headers=with_cookie))
    assert soap(get_events(sub_id, mark, mailbox=anchor), headers=with_cookie).codes() == \
        ["NoError"]
    other = next(b for b in boxes if server_of(sim, subscribed(soap(subscribe(
        "streaming", mailbox=b)))[0]) != server)
    assert soap(get_events(sub_id, mark, mailbox=other)).codes() == \
        ["ErrorSubscriptionNotFound"]
