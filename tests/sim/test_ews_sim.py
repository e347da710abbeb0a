"""Tests for the EWS simulator (tests/sim/ews_sim.py).

Run:  FOLLOWUPD_EWS_SCHEMA=/work/shared/ews-schema /usr/bin/python3 -m pytest -q tests/sim

The simulator runs as a real subprocess on loopback; every SOAP answer it gives (except
deliberately hostile ones) is itself checked against Microsoft's schema. Tests that need
the schema or its examples skip when FOLLOWUPD_EWS_SCHEMA is unset.
"""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from lxml import etree

import ews_sim

SIM = Path(__file__).with_name("ews_sim.py")
PYTHON = "/usr/bin/python3"
SCHEMA_DIR = os.environ.get("FOLLOWUPD_EWS_SCHEMA")
HAVE_SCHEMA = bool(SCHEMA_DIR) and os.path.isfile(os.path.join(SCHEMA_DIR, "ews-envelope.xsd"))
needs_schema = pytest.mark.skipif(not HAVE_SCHEMA, reason="FOLLOWUPD_EWS_SCHEMA not set")

NS = {"s": ews_sim.NS_SOAP, "m": ews_sim.NS_M, "t": ews_sim.NS_T, "e": ews_sim.NS_E}
PSET = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86"          # ews/ews_item.h EWS_PROPERTY_SET_ID
PNAME = "FollowupdContactLog"
EXAMPLE_PSET_KEY = "c11ff724-aa03-4555-9952-8fa248a11c3e/CrmContactLogId"
START_DEADLINE_S = 20


# ---------------------------------------------------------------------------
# Running the simulator
# ---------------------------------------------------------------------------

class Sim:
    """One simulator subprocess; ready once its port file appears."""

    def __init__(self, workdir: Path, *args, schema_env=True):
        self.workdir = workdir
        self.port_file = workdir / f"sim-{uuid.uuid4().hex}.port"
        self.stderr_path = workdir / f"sim-{uuid.uuid4().hex}.stderr"
        env = dict(os.environ)
        if not schema_env:
            env.pop("FOLLOWUPD_EWS_SCHEMA", None)
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [PYTHON, str(SIM), "--port", "0", "--port-file", str(self.port_file), *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.port_file.exists():
                return int(self.port_file.read_text().strip())
            try:
                # Doubles as the poll interval and as early detection of a crash.
                self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"ews_sim exited with {self.proc.returncode}: {self.stderr()}")
        self.stop()
        pytest.fail(f"ews_sim wrote no port file within {START_DEADLINE_S}s: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=10)

    # -- HTTP ----------------------------------------------------------------
    def connection(self, timeout=10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def control(self, method: str, path: str, value=None):
        conn = self.connection()
        try:
            body = None if value is None else json.dumps(value).encode()
            conn.request(method, path, body=body,
                         headers={"Content-Type": "application/json"} if body else {})
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, (response.status, data)
            return json.loads(data)
        finally:
            conn.close()

    def fault(self, **spec):
        return self.control("POST", "/_sim/faults", spec)

    def items(self, mailbox="user@example.com"):
        return self.control("GET", f"/_sim/mailboxes/{mailbox}")

    def requests(self):
        return self.control("GET", "/_sim/requests")


class Reply:
    def __init__(self, response: http.client.HTTPResponse):
        self.status = response.status
        self.headers = response.headers
        self.data = response.read()
        self.root = None
        if self.data and "xml" in (self.headers.get("Content-Type") or ""):
            self.root = etree.fromstring(self.data)

    def messages(self):
        return self.root.xpath("/s:Envelope/s:Body/*/m:ResponseMessages/*", namespaces=NS)

    def codes(self):
        return [m.findtext("m:ResponseCode", namespaces=NS) for m in self.messages()]

    def item_ids(self):
        return [(e.get("Id"), e.get("ChangeKey"))
                for e in self.root.xpath("//t:ItemId", namespaces=NS)]

    def fault_code(self):
        return self.root.findtext("s:Body/s:Fault/faultcode", namespaces=NS)


@pytest.fixture(scope="session")
def validator():
    return ews_sim.SchemaValidator(SCHEMA_DIR) if HAVE_SCHEMA else None


def post(sim: Sim, body: bytes, *, conn=None, content_type="text/xml; charset=utf-8",
         headers=None, auth=None, validator=None, path="/EWS/Exchange.asmx") -> Reply:
    """POSTs a SOAP request; with a validator, the answer must validate too."""
    own = conn is None
    conn = conn or sim.connection()
    try:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        conn.request("POST", path, body=body, headers=all_headers)
        reply = Reply(conn.getresponse())
    finally:
        if own:
            conn.close()
    if validator is not None and reply.root is not None:
        assert validator.errors(reply.root) == [], reply.data
    return reply


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    s = Sim(tmp_path_factory.mktemp("sim"))
    yield s
    assert s.stop() == 0


@pytest.fixture(autouse=True)
def clean_sim(request):
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").control("POST", "/_sim/reset")


@pytest.fixture
def soap(sim, validator):
    return lambda body, **kw: post(sim, body, validator=validator, **kw)


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

def example(name: str) -> bytes:
    return (Path(SCHEMA_DIR) / "examples" / name).read_bytes()


def envelope(body: str, mailbox="user@example.com") -> bytes:
    impersonation = "" if mailbox is None else (
        "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>"
        f"{escape(mailbox)}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")
    return f"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
               xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <soap:Header><t:RequestServerVersion Version="Exchange2013_SP1"/>{impersonation}</soap:Header>
  <soap:Body>{body}</soap:Body>
</soap:Envelope>""".encode()


def ext_uri() -> str:
    return f'<t:ExtendedFieldURI PropertySetId="{PSET}" PropertyName="{PNAME}" PropertyType="String"/>'


def ext_prop(tag: str) -> str:
    return f"<t:ExtendedProperty>{ext_uri()}<t:Value>{escape(tag)}</t:Value></t:ExtendedProperty>"


def calendar_item(tag="contactlog:1:appointment", subject="Call Ann", start="2025-03-01T09:00:00Z",
                  end="2025-03-01T09:30:00Z", importance="High", reminder=10) -> str:
    return f"""<t:CalendarItem>
      <t:Subject>{escape(subject)}</t:Subject>
      <t:Body BodyType="HTML">{escape('<p>Ann & co</p>')}</t:Body>
      <t:Importance>{importance}</t:Importance>
      <t:ReminderIsSet>true</t:ReminderIsSet>
      <t:ReminderMinutesBeforeStart>{reminder}</t:ReminderMinutesBeforeStart>
      {ext_prop(tag)}
      <t:Start>{start}</t:Start><t:End>{end}</t:End>
      <t:LegacyFreeBusyStatus>Busy</t:LegacyFreeBusyStatus>
      <t:StartTimeZone Id="W. Europe Standard Time"/><t:EndTimeZone Id="W. Europe Standard Time"/>
    </t:CalendarItem>"""


def task_item(tag="contactlog:1:task", subject="Call Ann", due="2025-03-01T09:00:00Z") -> str:
    return f"""<t:Task>
      <t:Subject>{escape(subject)}</t:Subject>
      <t:Body BodyType="HTML">&lt;b&gt;x&lt;/b&gt;</t:Body>
      <t:Importance>Low</t:Importance>
      <t:ReminderDueBy>{due}</t:ReminderDueBy><t:ReminderIsSet>true</t:ReminderIsSet>
      {ext_prop(tag)}
      <t:DueDate>{due}</t:DueDate><t:Status>NotStarted</t:Status>
    </t:Task>"""


def create(items: str, folder="calendar", mailbox="user@example.com", folder_mailbox=None,
           invitations=' SendMeetingInvitations="SendToNone"') -> bytes:
    target = (f'<t:DistinguishedFolderId Id="{folder}"><t:Mailbox><t:EmailAddress>'
              f'{folder_mailbox}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>'
              if folder_mailbox else f'<t:DistinguishedFolderId Id="{folder}"/>')
    return envelope(f"""<m:CreateItem{invitations}>
      <m:SavedItemFolderId>{target}</m:SavedItemFolderId>
      <m:Items>{items}</m:Items></m:CreateItem>""", mailbox)


def find(tag: str, folders=("calendar", "tasks"), mailbox="user@example.com", view="",
         folder_xml=None) -> bytes:
    parents = folder_xml or "".join(f'<t:DistinguishedFolderId Id="{f}"/>' for f in folders)
    return envelope(f"""<m:FindItem Traversal="Shallow">
      <m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>
        <t:AdditionalProperties>{ext_uri()}</t:AdditionalProperties></m:ItemShape>
      {view}
      <m:Restriction><t:IsEqualTo>{ext_uri()}
        <t:FieldURIOrConstant><t:Constant Value={quoteattr(tag)}/></t:FieldURIOrConstant>
      </t:IsEqualTo></m:Restriction>
      <m:ParentFolderIds>{parents}</m:ParentFolderIds></m:FindItem>""", mailbox)


def update(item_id: str, updates: str, change_key=None, mailbox="user@example.com",
           conflict="AlwaysOverwrite") -> bytes:
    key = f" ChangeKey={quoteattr(change_key)}" if change_key else ""
    return envelope(f"""<m:UpdateItem ConflictResolution="{conflict}"
        SendMeetingInvitationsOrCancellations="SendToNone">
      <m:ItemChanges><t:ItemChange><t:ItemId Id={quoteattr(item_id)}{key}/>
        <t:Updates>{updates}</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>""",
                    mailbox)


def set_field(uri: str, element: str, kind="CalendarItem") -> str:
    return (f'<t:SetItemField><t:FieldURI FieldURI="{uri}"/>'
            f'<t:{kind}>{element}</t:{kind}></t:SetItemField>')


def delete(*item_ids, mailbox="user@example.com") -> bytes:
    ids = "".join(f"<t:ItemId Id={quoteattr(i)}/>" for i in item_ids)
    return envelope(f"""<m:DeleteItem DeleteType="HardDelete" SendMeetingCancellations="SendToNone"
        AffectedTaskOccurrences="AllOccurrences"><m:ItemIds>{ids}</m:ItemIds></m:DeleteItem>""",
                    mailbox)


def get_item(*item_ids, shape="AllProperties", mailbox="user@example.com") -> bytes:
    ids = "".join(f"<t:ItemId Id={quoteattr(i)}/>" for i in item_ids)
    return envelope(f"""<m:GetItem><m:ItemShape><t:BaseShape>{shape}</t:BaseShape>
        <t:AdditionalProperties>{ext_uri()}</t:AdditionalProperties></m:ItemShape>
        <m:ItemIds>{ids}</m:ItemIds></m:GetItem>""", mailbox)


def get_folder(*folders, mailbox="user@example.com") -> bytes:
    ids = "".join(f'<t:DistinguishedFolderId Id="{f}"/>' for f in folders)
    return envelope(f"""<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape>
        </m:FolderShape><m:FolderIds>{ids}</m:FolderIds></m:GetFolder>""", mailbox)


def with_ids(document: bytes, item_id: str, change_key: str) -> bytes:
    """An example request retargeted at a real item."""
    return (document.replace(b'Id="AAMkAD...="', f"Id={quoteattr(item_id)}".encode())
            .replace(b'ChangeKey="DwAAABYA..."', f"ChangeKey={quoteattr(change_key)}".encode()))


def create_one(soap, items=None, **kw):
    reply = soap(create(items or calendar_item(), **kw))
    assert reply.status == 200 and reply.codes() == ["NoError"], reply.data
    return reply.item_ids()[0]


# ---------------------------------------------------------------------------
# The operations, with Microsoft-shaped examples
# ---------------------------------------------------------------------------

@needs_schema
def test_create_calendar_item_example_is_stored(sim, soap):
    reply = soap(example("createitem-calendaritem.xml"),
                 headers={"X-AnchorMailbox": "user@example.com"})
    assert reply.status == 200
    [msg] = reply.messages()
    assert msg.tag == f"{{{ews_sim.NS_M}}}CreateItemResponseMessage"
    assert msg.get("ResponseClass") == "Success" and reply.codes() == ["NoError"]
    [(item_id, change_key)] = reply.item_ids()
    [item] = sim.items()
    assert (item["id"], item["change_key"]) == (item_id, change_key)
    assert item["kind"] == "appointment" and item["folder"] == "calendar"
    assert item["subject"] == "Follow-up call"
    assert item["body_type"] == "HTML" and 'href="https://crm.example.com/contactlog/42"' in item["body"]
    assert item["importance"] == "High"
    assert item["reminder_is_set"] is True and item["reminder_minutes"] == 15
    assert (item["start"], item["end"]) == ("2025-03-01T09:00:00Z", "2025-03-01T09:30:00Z")
    assert item["legacy_free_busy"] == "Busy"
    assert item["extended_properties"] == {EXAMPLE_PSET_KEY: "contactlog:42"}
    assert item["send_meeting_invitations"] == "SendToNone"
    assert item["created_seq"] == 1 and item["updated_count"] == 0
    [record] = sim.requests()
    assert record["op"] == "CreateItem" and record["mailbox"] == "user@example.com"
    assert record["anchor_mailbox"] == "user@example.com" and record["impersonation"] is True
    assert record["valid"] is True and record["error"] is None and record["http_status"] == 200
    assert record["server_version"] == "Exchange2013_SP1"


@needs_schema
def test_create_task_example_is_stored(sim, soap):
    reply = soap(example("createitem-task.xml"))
    assert reply.codes() == ["NoError"]
    [item] = sim.items()
    assert item["kind"] == "task" and item["folder"] == "tasks"
    assert item["subject"] == "Call back customer"
    assert item["due_date"] == "2025-03-02T00:00:00Z"
    assert item["start_date"] == "2025-03-01T00:00:00Z"
    assert item["reminder_due_by"] == "2025-03-02T08:00:00Z" and item["reminder_is_set"] is True
    assert item["status"] == "NotStarted" and item["importance"] == "Normal"
    assert item["extended_properties"] == {EXAMPLE_PSET_KEY: "contactlog:42"}


@needs_schema
def test_find_item_example_finds_by_extended_property(sim, soap):
    calendar_id, _ = soap(example("createitem-calendaritem.xml")).item_ids()[0]
    task_id, _ = soap(example("createitem-task.xml")).item_ids()[0]
    create_one(soap, calendar_item("contactlog:43"))            # must not match

    reply = soap(example("finditem-by-extended-property.xml"))
    # One FindItemResponseMessage per parent folder, as Exchange answers.
    assert reply.codes() == ["NoError", "NoError"]
    calendar_msg, tasks_msg = reply.messages()
    for msg, expected_id, tag in ((calendar_msg, calendar_id, "CalendarItem"),
                                  (tasks_msg, task_id, "Task")):
        root = msg.find("m:RootFolder", NS)
        assert root.get("TotalItemsInView") == "1"
        assert root.get("IncludesLastItemInRange") == "true"
        [item] = root.find("t:Items", NS)
        assert item.tag == f"{{{ews_sim.NS_T}}}{tag}"
        assert item.find("t:ItemId", NS).get("Id") == expected_id
        assert item.findtext("t:ExtendedProperty/t:Value", namespaces=NS) == "contactlog:42"


@needs_schema
def test_update_item_example_reschedules(sim, soap):
    item_id, change_key = soap(example("createitem-calendaritem.xml")).item_ids()[0]
    reply = soap(with_ids(example("updateitem-reschedule.xml"), item_id, change_key))
    assert reply.codes() == ["NoError"]
    [(same_id, new_key)] = reply.item_ids()
    assert same_id == item_id and new_key != change_key
    [item] = sim.items()
    assert (item["start"], item["end"]) == ("2025-03-03T09:00:00Z", "2025-03-03T09:30:00Z")
    assert item["change_key"] == new_key and item["updated_count"] == 1
    assert item["subject"] == "Follow-up call"                   # untouched fields stay


@needs_schema
def test_delete_item_example_removes(sim, soap):
    item_id, change_key = soap(example("createitem-calendaritem.xml")).item_ids()[0]
    reply = soap(with_ids(example("deleteitem-cancel.xml"), item_id, change_key))
    assert reply.codes() == ["NoError"]
    assert sim.items() == []
    deleted = sim.control("GET", "/_sim/deleted")["user@example.com"]
    assert [d["id"] for d in deleted] == [item_id]
    assert deleted[0]["delete_type"] == "MoveToDeletedItems"
    again = soap(with_ids(example("deleteitem-cancel.xml"), item_id, change_key))
    assert again.codes() == ["ErrorItemNotFound"]
    assert again.messages()[0].get("ResponseClass") == "Error"


def test_create_several_items_answers_one_message_each(sim, soap):
    reply = soap(create(calendar_item("contactlog:1:appointment")
                        + calendar_item("contactlog:2:appointment", subject="Second")))
    assert reply.codes() == ["NoError", "NoError"]
    ids = [i for i, _ in reply.item_ids()]
    stored = sim.items()
    assert [i["id"] for i in stored] == ids and len(set(ids)) == 2
    assert [i["created_seq"] for i in stored] == [1, 2]
    assert stored[1]["subject"] == "Second"
    assert stored[0]["start_time_zone"] == "W. Europe Standard Time"
    assert stored[0]["reminder_minutes"] == 10
    assert stored[0]["body"] == "<p>Ann & co</p>"


def test_get_item_returns_the_fields(sim, soap):
    subject = "Ünïcode <&> subject"
    item_id, _ = create_one(soap, calendar_item(subject=subject))
    task_id, _ = create_one(soap, task_item(), folder="tasks")
    reply = soap(get_item(item_id, task_id))
    assert reply.codes() == ["NoError", "NoError"]
    appointment = reply.root.find(".//t:CalendarItem", NS)
    assert appointment.findtext("t:Subject", namespaces=NS) == subject
    assert appointment.findtext("t:Start", namespaces=NS) == "2025-03-01T09:00:00Z"
    assert appointment.findtext("t:Importance", namespaces=NS) == "High"
    assert appointment.findtext("t:ReminderMinutesBeforeStart", namespaces=NS) == "10"
    assert appointment.findtext("t:ExtendedProperty/t:Value", namespaces=NS) == \
        "contactlog:1:appointment"
    task = reply.root.find(".//t:Task", NS)
    assert task.findtext("t:DueDate", namespaces=NS) == "2025-03-01T09:00:00Z"
    assert task.findtext("t:Status", namespaces=NS) == "NotStarted"

    id_only = soap(get_item(item_id, shape="IdOnly"))
    [appointment] = id_only.root.findall(".//t:CalendarItem", NS)
    assert appointment.find("t:Subject", NS) is None
    assert appointment.find("t:ExtendedProperty", NS) is not None   # asked for by URI
    assert soap(get_item("AAMkNoSuchItem=")).codes() == ["ErrorItemNotFound"]


def test_update_item_changes_fields(sim, soap):
    item_id, change_key = create_one(soap)
    reply = soap(update(item_id, set_field("item:Subject", "<t:Subject>New subject</t:Subject>")
                        + set_field("item:Importance", "<t:Importance>Low</t:Importance>")
                        + f"<t:SetItemField>{ext_uri()}<t:CalendarItem>{ext_prop('contactlog:9')}"
                          "</t:CalendarItem></t:SetItemField>"
                        + '<t:DeleteItemField><t:FieldURI FieldURI="item:Body"/></t:DeleteItemField>',
                        change_key))
    assert reply.codes() == ["NoError"]
    [item] = sim.items()
    assert item["subject"] == "New subject" and item["importance"] == "Low"
    assert item["body"] is None
    assert item["extended_properties"] == {f"{PSET}/{PNAME}": "contactlog:9"}
    assert item["updated_count"] == 1 and item["change_key"] != change_key


def test_update_task_completion_keeps_status_and_percent_consistent(sim, soap):
    task_id, _ = create_one(soap, task_item(), folder="tasks")
    reply = soap(update(task_id, set_field("task:Status", "<t:Status>Completed</t:Status>", "Task")))
    assert reply.codes() == ["NoError"]
    [task] = sim.items()
    assert task["status"] == "Completed" and task["percent_complete"] == 100.0


def test_update_errors_like_exchange(sim, soap):
    item_id, change_key = create_one(soap)
    subject = set_field("item:Subject", "<t:Subject>x</t:Subject>")
    assert soap(update("AAMkNoSuchItem=", subject)).codes() == ["ErrorItemNotFound"]
    # Another mailbox's item is not found through this one.
    assert soap(update(item_id, subject, mailbox="other@example.com")).codes() == \
        ["ErrorItemNotFound"]
    two_fields = set_field("item:Subject", "<t:Subject>x</t:Subject><t:Importance>Low</t:Importance>")
    assert soap(update(item_id, two_fields)).codes() == ["ErrorIncorrectUpdatePropertyCount"]
    task_field = set_field("task:Status", "<t:Status>Completed</t:Status>", "Task")
    assert soap(update(item_id, task_field)).codes() == ["ErrorInvalidPropertySet"]
    stale = soap(update(item_id, subject, change_key="DwAAABYAAAAstale", conflict="NeverOverwrite"))
    assert stale.codes() == ["ErrorIrresolvableConflict"]
    [item] = sim.items()
    assert item["change_key"] == change_key and item["updated_count"] == 0


def test_delete_removes_and_unknown_is_not_found(sim, soap):
    first, _ = create_one(soap)
    second, _ = create_one(soap, task_item(), folder="tasks")
    reply = soap(delete(first, "AAMkNoSuchItem=", second))
    assert reply.codes() == ["NoError", "ErrorItemNotFound", "NoError"]
    assert sim.items() == []
    assert len(sim.control("GET", "/_sim/deleted")["user@example.com"]) == 2


def test_find_item_no_match_and_paging(sim, soap):
    for _ in range(3):
        create_one(soap, calendar_item("contactlog:7:appointment"))
    none = soap(find("contactlog:8:appointment", folders=("calendar",)))
    root = none.root.find(".//m:RootFolder", NS)
    assert root.get("TotalItemsInView") == "0" and len(root.find("t:Items", NS)) == 0
    view = '<m:IndexedPageItemView MaxEntriesReturned="2" Offset="0" BasePoint="Beginning"/>'
    page = soap(find("contactlog:7:appointment", folders=("calendar",), view=view))
    root = page.root.find(".//m:RootFolder", NS)
    assert root.get("TotalItemsInView") == "3" and root.get("IncludesLastItemInRange") == "false"
    assert len(root.find("t:Items", NS)) == 2
    # Other mailboxes are separate.
    other = soap(find("contactlog:7:appointment", folders=("calendar",), mailbox="x@example.com"))
    assert other.root.find(".//m:RootFolder", NS).get("TotalItemsInView") == "0"


def test_get_folder_and_find_through_its_folder_id(sim, soap):
    item_id, _ = create_one(soap)
    reply = soap(get_folder("calendar", "tasks"))
    assert reply.codes() == ["NoError", "NoError"]
    calendar = reply.root.find(".//t:CalendarFolder", NS)
    assert reply.root.find(".//t:TasksFolder", NS) is not None
    folder_id = calendar.find("t:FolderId", NS).get("Id")
    found = soap(find("contactlog:1:appointment",
                      folder_xml=f"<t:FolderId Id={quoteattr(folder_id)}/>"))
    assert found.item_ids() == [(item_id, sim.items()[0]["change_key"])]


def test_delegate_access_uses_the_folder_mailbox(sim, soap):
    reply = soap(create(calendar_item(), mailbox=None, folder_mailbox="Boss@Example.com"),
                 headers={"X-AnchorMailbox": "boss@example.com"})
    assert reply.codes() == ["NoError"]
    assert len(sim.items("boss@example.com")) == 1
    [record] = sim.requests()
    assert record["impersonation"] is False and record["mailbox"] == "boss@example.com"
    assert record["anchor_mailbox"] == "boss@example.com"


def test_server_side_rules_the_schema_does_not_catch(sim, soap):
    reply = soap(create(calendar_item(), invitations=""))
    assert reply.codes() == ["ErrorSendMeetingInvitationsRequired"]
    item_id, _ = create_one(soap)
    no_cancellations = envelope(f"""<m:DeleteItem DeleteType="HardDelete"><m:ItemIds>
        <t:ItemId Id={quoteattr(item_id)}/></m:ItemIds></m:DeleteItem>""")
    assert soap(no_cancellations).codes() == ["ErrorSendMeetingCancellationsRequired"]
    assert len(sim.items()) == 1


def test_unimplemented_operation_is_invalid_request(sim, soap):
    reply = soap(envelope('<m:ResolveNames ReturnFullContactData="false">'
                          '<m:UnresolvedEntry>ann</m:UnresolvedEntry></m:ResolveNames>'))
    assert reply.status == 200 and reply.codes() == ["ErrorInvalidRequest"]


# ---------------------------------------------------------------------------
# Rejected requests
# ---------------------------------------------------------------------------

@needs_schema
def test_schema_invalid_request_is_500_and_recorded(sim, soap):
    bad = create(calendar_item().replace("<t:Importance>High</t:Importance>", "")
                 .replace("</t:Subject>", "</t:Subject><t:Importance>Urgent</t:Importance>"))
    reply = soap(bad)
    assert reply.status == 500
    assert reply.fault_code() == "a:ErrorSchemaValidation"
    assert reply.root.findtext(".//e:ResponseCode", namespaces=NS) == "ErrorSchemaValidation"
    assert sim.items() == []
    [error] = sim.control("GET", "/_sim/errors")
    assert "Urgent" in error and "CreateItem" in error
    [record] = sim.requests()
    assert record["valid"] is False and record["http_status"] == 500 and "Urgent" in record["error"]

    misordered = create(calendar_item().replace(
        "<t:Start>2025-03-01T09:00:00Z</t:Start>", "").replace(
        "<t:Subject>", "<t:Start>2025-03-01T09:00:00Z</t:Start><t:Subject>"))
    assert soap(misordered).status == 500
    assert len(sim.control("GET", "/_sim/errors")) == 2


def test_wrong_content_type_is_rejected(sim, soap):
    reply = soap(create(calendar_item()), content_type="application/soap+xml; charset=utf-8")
    assert reply.status == 500 and reply.fault_code() == "a:ErrorSchemaValidation"
    assert sim.items() == []
    [record] = sim.requests()
    assert record["content_type"] == "application/soap+xml; charset=utf-8"
    assert record["valid"] is False and "Content-Type" in record["error"]


@pytest.mark.parametrize("body", [
    b"",
    b"<not-closed>",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b"<x>&b;</x>",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/>'
    b"</soap:Envelope>",
])
def test_hostile_or_malformed_xml_is_rejected(sim, soap, body):
    reply = soap(body)
    assert reply.status == 500 and reply.fault_code() == "a:ErrorSchemaValidation"
    assert b"root:" not in reply.data
    assert len(sim.control("GET", "/_sim/errors")) == 1


# ---------------------------------------------------------------------------
# Control API, HTTP behaviour
# ---------------------------------------------------------------------------

def test_keep_alive_serves_several_requests_on_one_connection(sim, validator):
    conn = sim.connection()
    try:
        for n in range(3):
            reply = post(sim, create(calendar_item(f"contactlog:{n}:appointment")), conn=conn,
                         validator=validator)
            assert reply.codes() == ["NoError"]
            assert reply.headers["Content-Length"] == str(len(reply.data))
    finally:
        conn.close()
    assert len(sim.items()) == 3


def test_reset_stats_and_control_item_delete(sim, soap):
    item_id, _ = create_one(soap)
    create_one(soap, task_item(), folder="tasks")
    soap(find("contactlog:1:appointment"))
    assert sim.control("GET", "/_sim/stats") == {"CreateItem": 2, "FindItem": 1}
    with_bodies = sim.control("GET", "/_sim/requests?body=1&op=FindItem")
    assert len(with_bodies) == 1 and "<m:FindItem" in with_bodies[0]["body"]
    # A user deleting the appointment in Outlook, behind the client's back.
    quoted = item_id.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")
    assert sim.control("DELETE", f"/_sim/items/{quoted}")["id"] == item_id
    assert [i["kind"] for i in sim.items()] == ["task"]
    assert set(sim.control("GET", "/_sim/mailboxes")) == {"user@example.com"}
    sim.fault(mode="delay", ms=1, count=-1)
    sim.control("POST", "/_sim/reset")
    assert sim.control("GET", "/_sim/mailboxes") == {}
    assert sim.requests() == [] and sim.control("GET", "/_sim/faults") == []
    assert sim.control("GET", "/_sim/stats") == {}


def test_concurrent_requests_are_all_stored(sim, validator):
    errors = []

    def worker(n):
        try:
            for k in range(10):
                reply = post(sim, create(calendar_item(f"contactlog:{n}-{k}:appointment")),
                             validator=validator)
                assert reply.codes() == ["NoError"]
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    items = sim.items()
    assert len(items) == 80 and len({i["id"] for i in items}) == 80
    assert sorted(r["seq"] for r in sim.requests()) == list(range(1, 81))


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------

def test_fault_drop_after_perform(sim, soap):
    sim.fault(mode="drop_after_perform")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        soap(create(calendar_item()))
    assert len(sim.items()) == 1                           # performed, answer lost
    [record] = sim.requests()
    assert record["fault"] == "drop_after_perform" and record["http_status"] is None
    assert soap(create(calendar_item())).codes() == ["NoError"]   # one-shot


def test_fault_drop_before_perform(sim, soap):
    sim.fault(mode="drop_before_perform")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        soap(create(calendar_item()))
    assert sim.items() == []


def test_fault_http_status(sim, soap):
    sim.fault(mode="http_status", status=503, retry_after=5, body="busy, go away")
    reply = soap(create(calendar_item()))
    assert reply.status == 503 and reply.headers["Retry-After"] == "5"
    assert reply.data == b"busy, go away"
    assert sim.items() == []
    assert sim.requests()[0]["http_status"] == 503


def test_fault_server_busy(sim, soap):
    sim.fault(mode="server_busy", back_off_ms=1234)
    reply = soap(create(calendar_item() + task_item()))
    assert reply.status == 200 and reply.codes() == ["ErrorServerBusy", "ErrorServerBusy"]
    for msg in reply.messages():
        assert msg.get("ResponseClass") == "Error"
        assert msg.findtext("m:MessageXml/t:Value[@Name='BackOffMilliseconds']",
                            namespaces=NS) == "1234"
    assert sim.items() == []


def test_fault_server_busy_soap_fault(sim, soap):
    sim.fault(mode="server_busy_fault", back_off_ms=30000)
    reply = soap(create(calendar_item()))
    assert reply.status == 500 and reply.fault_code() == "a:ErrorServerBusy"
    assert reply.root.findtext(".//t:MessageXml/t:Value[@Name='BackOffMilliseconds']",
                               namespaces=NS) == "30000"
    assert sim.items() == []


def test_fault_response_code(sim, soap):
    sim.fault(mode="response_code", code="ErrorImpersonateUserDenied")
    reply = soap(create(calendar_item() + calendar_item()))
    assert reply.codes() == ["ErrorImpersonateUserDenied"] * 2
    assert sim.items() == []


def test_fault_delay_performs_then_answers_late(sim, soap):
    sim.fault(mode="delay", ms=300)
    started = time.monotonic()
    assert soap(create(calendar_item())).codes() == ["NoError"]
    assert time.monotonic() - started >= 0.3
    # A client that gives up before the answer still created the item.
    sim.fault(mode="delay", ms=3000)
    conn = sim.connection(timeout=0.5)
    try:
        with pytest.raises(socket.timeout):
            post(sim, create(calendar_item()), conn=conn)
    finally:
        conn.close()
    assert len(sim.items()) == 2


def test_fault_raw_answers_verbatim(sim, soap):
    hostile = b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'a'>]><x>&a;</x>"
    sim.fault(mode="raw", status=200, content_type="text/xml; charset=utf-8",
              body=hostile.decode())
    conn = sim.connection()
    try:
        conn.request("POST", "/EWS/Exchange.asmx", body=create(calendar_item()),
                     headers={"Content-Type": "text/xml; charset=utf-8"})
        response = conn.getresponse()
        assert response.status == 200 and response.read() == hostile
    finally:
        conn.close()
    assert sim.items() == []
    sim.fault(mode="raw", status=502, content_type="text/html", body_b64=base64.b64encode(
        b"\xff\xfe not utf-8").decode())
    reply = soap(create(calendar_item()))
    assert reply.status == 502 and reply.data == b"\xff\xfe not utf-8"


def test_faults_fifo_ops_filter_and_until_cleared(sim, soap):
    sim.fault(mode="response_code", code="ErrorMailboxMoveInProgress", ops=["UpdateItem"])
    sim.fault(mode="server_busy", count=2, back_off_ms=1)
    sim.fault(mode="http_status", status=500)
    # CreateItem skips the UpdateItem-only fault, takes the next ones in order.
    assert soap(create(calendar_item())).codes() == ["ErrorServerBusy"]
    assert soap(create(calendar_item())).codes() == ["ErrorServerBusy"]
    assert soap(create(calendar_item())).status == 500
    item_id, _ = create_one(soap)
    reply = soap(update(item_id, set_field("item:Subject", "<t:Subject>x</t:Subject>")))
    assert reply.codes() == ["ErrorMailboxMoveInProgress"]
    assert sim.control("GET", "/_sim/faults") == []

    sim.fault(mode="server_busy", count=-1)
    for _ in range(3):
        assert soap(create(calendar_item())).codes() == ["ErrorServerBusy"]
    assert sim.control("DELETE", "/_sim/faults") == {"cleared": 1}
    assert soap(create(calendar_item())).codes() == ["NoError"]
    assert [r["fault"] for r in sim.requests()] == [
        "server_busy", "server_busy", "http_status", None, "response_code",
        "server_busy", "server_busy", "server_busy", None]


def test_bad_fault_spec_is_400(sim):
    conn = sim.connection()
    try:
        for spec in ({"mode": "explode"}, {"mode": "delay", "count": 0}, [1]):
            conn.request("POST", "/_sim/faults", body=json.dumps(spec).encode())
            response = conn.getresponse()
            assert response.status == 400 and "error" in json.loads(response.read())
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Command-line options
# ---------------------------------------------------------------------------

def test_basic_auth_required_with_users(tmp_path, validator):
    sim = Sim(tmp_path, "--users", "alice:secret,svc:pw")
    try:
        body = create(calendar_item())
        for auth in (None, ("alice", "wrong"), ("mallory", "secret")):
            reply = post(sim, body, auth=auth)
            assert reply.status == 401
            assert reply.headers["WWW-Authenticate"] == 'Basic realm="EWS"'
        assert sim.items() == []
        reply = post(sim, body, auth=("svc", "pw"), validator=validator)
        assert reply.status == 200 and reply.codes() == ["NoError"]
        records = sim.requests()
        assert [r["http_status"] for r in records] == [401, 401, 401, 200]
        assert [r["auth_user"] for r in records] == [None, "alice", "mallory", "svc"]
        assert records[0]["valid"] is None
    finally:
        assert sim.stop() == 0


def test_known_mailboxes(tmp_path, validator):
    sim = Sim(tmp_path, "--known-mailboxes", "user@example.com,Boss@example.com")
    try:
        reply = post(sim, create(calendar_item() + task_item(), mailbox="ghost@example.com"),
                     validator=validator)
        assert reply.codes() == ["ErrorNonExistentMailbox"] * 2
        assert sim.control("GET", "/_sim/mailboxes") == {}
        reply = post(sim, create(calendar_item(), mailbox="boss@example.com"), validator=validator)
        assert reply.codes() == ["NoError"]
    finally:
        assert sim.stop() == 0


def test_without_schema_warns_once_and_skips_validation(tmp_path):
    sim = Sim(tmp_path, schema_env=False)
    try:
        not_valid = create(calendar_item(importance="Urgent"))
        assert post(sim, not_valid).codes() == ["NoError"]
        assert sim.requests()[0]["schema_checked"] is False
        assert post(sim, not_valid, content_type="text/plain").status == 500
    finally:
        assert sim.stop() == 0
    assert sim.stderr().count(ews_sim.SCHEMA_SKIPPED_LINE) == 1
    assert sim.stderr().strip() == ews_sim.SCHEMA_SKIPPED_LINE


def test_latency_applies_to_every_soap_answer(tmp_path):
    sim = Sim(tmp_path, "--latency-ms", "200")
    try:
        started = time.monotonic()
        assert post(sim, create(calendar_item())).codes() == ["NoError"]
        assert time.monotonic() - started >= 0.2
    finally:
        assert sim.stop() == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls(tmp_path, validator):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    sim = Sim(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", sim.port, context=context, timeout=10)
        reply = post(sim, create(calendar_item()), conn=conn, validator=validator)
        assert reply.codes() == ["NoError"]
        # A client that refuses our certificate does not take the server down.
        with pytest.raises(ssl.SSLError):
            strict = http.client.HTTPSConnection("127.0.0.1", sim.port, timeout=10,
                                                 context=ssl.create_default_context())
            post(sim, create(calendar_item()), conn=strict)
        reply = post(sim, create(calendar_item()), conn=conn, validator=validator)
        assert reply.codes() == ["NoError"]
        conn.close()
    finally:
        assert sim.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exits_cleanly_on_signal(tmp_path, signum):
    sim = Sim(tmp_path)
    conn = sim.connection()                     # an idle keep-alive connection stays open
    post(sim, create(calendar_item()), conn=conn)
    sim.proc.send_signal(signum)
    assert sim.proc.wait(timeout=10) == 0
    conn.close()
