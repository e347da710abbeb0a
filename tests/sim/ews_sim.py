#!/usr/bin/python3
"""ews_sim — a small Exchange Web Services simulator for followupd's tests, demo and benchmarks.

A real HTTP(S) server on 127.0.0.1 that answers the EWS operations followupd uses
(CreateItem, GetItem, UpdateItem, DeleteItem, FindItem, GetFolder, and for Outlook ->
CRM: SyncFolderItems, Subscribe, GetEvents, GetStreamingEvents, Unsubscribe) the way
Exchange does, validates every request against Microsoft's schema, keeps the resulting
calendar items and tasks in memory, and can be told to misbehave (lost responses,
throttling, HTTP errors, hostile bodies) through a JSON control API under /_sim/.
Change tracking (sync states, pull and streaming notifications, affinity cookie,
expiry and its errors) lives in ews_sync.py, whose docstring describes it in full.

Python 3 standard library plus Debian's python3-lxml only. Run with /usr/bin/python3:

  /usr/bin/python3 tests/sim/ews_sim.py --port 0 --port-file FILE [--users alice:secret,svc:pw]
      [--schema-dir DIR | --no-schema] [--latency-ms N] [--known-mailboxes a@x,b@y]
      [--tls-cert CERT --tls-key KEY] [--verbose]
      [--auth basic | --auth negotiate --keytab FILE [--principal NAME]
       | --auth ntlm --ntlm-users FILE [--ntlm-acceptor samba|gss-ntlmssp]]

--auth negotiate and ntlm (Windows authentication as IIS does it, checked by MIT
Kerberos' GSSAPI, Samba's ntlm_auth or gss-ntlmssp: see "Windows authentication" below)
need python3-gssapi (negotiate, gss-ntlmssp), winbind (samba) or gss-ntlmssp.

Control API (JSON, no authentication; the part shared with graph_sim.py lives in
sim_control.py, which documents it in full):
  GET    /_sim/mailboxes            {"mailbox": [items...]} (every mailbox addressed so far)
  GET    /_sim/mailboxes/<addr>     [items] of one mailbox (address case-insensitive)
  GET    /_sim/deleted              {"mailbox": [deleted items]}
  GET    /_sim/items/<id>           one live item; DELETE removes it: a person deletes it in
                                    Outlook, i.e. moves it to Deleted Items (notifications:
                                    MovedEvent; SyncFolderItems: Delete); ?hard=1: Shift+Del
                                    (DeletedEvent)
  PATCH  /_sim/items/<id>           {"subject", "start", "end"} of an appointment, {"subject",
                                    "status", "due_date"} of a task, as /_sim/mailboxes shows
                                    them: a person's edit in Outlook (new ChangeKey,
                                    edited_count + 1; updated_count counts UpdateItem only;
                                    a task set to Completed gets complete_date, shown as
                                    CompleteDate); answers the item. Every change, by a
                                    person or through EWS, is seen by SyncFolderItems and
                                    notifications (ews_sync.py)
  POST   /_sim/items/<id>/move      new ItemId, all else kept (the old id joins the item's
                                    "previous_ids"); the old id then gets ErrorItemNotFound;
                                    answers {"id": "<new id>"}
  GET    /_sim/requests[?op=X][&body=1]   request log, oldest first; each entry has
                                    "connection" ("ip:port") and "connection_seq" (requests
                                    the TCP connection carried before: 0 = fresh)
  GET    /_sim/errors               rejected-request reasons (schema, XML, Content-Type)
  GET    /_sim/stats                {"CreateItem": n, ...}
  POST   /_sim/reset                forget items, requests, errors, faults and settings
  POST   /_sim/reject-subjects      {"contains", "code"}: such items fail alone in CreateItem
  POST   /_sim/revoke-tokens        every OAuth2 bearer token issued so far stops working
  POST   /_sim/faults               queue {"mode", "count", "ops", "mailboxes", ...} or a list of them
  GET    /_sim/faults               the queue;  DELETE /_sim/faults clears it
  GET    /_sim/settings             {"ignore_connection_close": false, "lookup_lag_ms": 0,
                                    "mailbox_servers": 1, "notification_minute_s": 60,
                                    "streaming_heartbeat_s": 30, "events_per_notification":
                                    50, "streaming_schema_namespaces": false}
  POST   /_sim/settings             change some: "ignore_connection_close": true keeps a
                                    connection open despite "Connection: close" (as HTTP/2);
                                    "lookup_lag_ms": N hides items younger than N ms from
                                    FindItem with a Restriction (search lag); the others:
                                    see ews_sync.py
  POST   /_sim/expire               {"mailbox" (or "*"), "what": "subscriptions" |
                                    "sync_state" | "watermark"}: subscriptions expire
                                    (ErrorExpiredSubscription), sync states become invalid
                                    (ErrorInvalidSyncStateData), watermarks too
                                    (ErrorInvalidWatermark)
  GET    /_sim/sync-stats           subscriptions and open streaming connections (counts)
  GET    /_sim/subscriptions        every subscription with its state
Fault modes: drop_after_perform, drop_before_perform, http_status, server_busy,
server_busy_fault, response_code, delay, raw (see EwsRequestHandler.answer). delay: "ms";
"when": "before_perform" performs late (default: performs, then answers late);
"answer": "drop" closes the connection after the delay instead of answering.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import dataclasses
import hmac
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from lxml import etree

# sim_control.py sits beside this file. Run as a script, this folder is sys.path[0]
# already (unless PYTHONSAFEPATH is set); imported from elsewhere, it may not be.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import ews_sync  # noqa: E402
import sim_control  # noqa: E402
from sim_control import (ControlHandlerMixin, ControlStore, LoopbackServer,  # noqa: E402
                         after_perform, check_edit, delay_before_perform, normalise_mailbox)

# ---------------------------------------------------------------------------
# Namespaces and small XML helpers
# ---------------------------------------------------------------------------

NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
NS_E = "http://schemas.microsoft.com/exchange/services/2006/errors"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def S(name: str) -> str:
    return f"{{{NS_SOAP}}}{name}"


def M(name: str) -> str:
    return f"{{{NS_M}}}{name}"


def T(name: str) -> str:
    return f"{{{NS_T}}}{name}"


def E(name: str) -> str:
    return f"{{{NS_E}}}{name}"


def local_name(elem) -> str:
    return etree.QName(elem).localname


def child_elements(elem) -> list:
    """Element children only (comments and processing instructions skipped)."""
    if elem is None:
        return []
    return [c for c in elem if isinstance(c.tag, str)]


def xml_bool(value: bool) -> str:
    return "true" if value else "false"


def parse_xml_bool(text) -> bool:
    return (text or "").strip() in ("true", "1")


def sub(parent, tag: str, text=None, **attrs):
    """SubElement with optional text; attributes whose value is None are left out."""
    elem = etree.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = str(text)
    return elem


# ---------------------------------------------------------------------------
# Request parsing and schema validation
# ---------------------------------------------------------------------------

MAX_REQUEST_BYTES = 16 * 1024 * 1024
# What it means for whoever runs the simulator: requests are still answered, but not
# checked, so a request a real Exchange would refuse (ErrorSchemaValidation) passes.
SCHEMA_SKIPPED_LINE = ("ews_sim: Microsoft's EWS schema (ews-envelope.xsd) not found: requests "
                       "are answered WITHOUT being checked against it, so one that Exchange "
                       "would refuse may pass here; give --schema-dir DIR "
                       "(FOLLOWUPD_EWS_SCHEMA) to check them")

# libxml2 rejects ArrayOfTransitionsType as non-deterministic (UPA); these three
# substitution-group references are redundant with t:Transition (see the schema README).
_UPA_LINE = re.compile(
    rb'<xs:element ref="t:(AbsoluteDateTransition|RecurringDayTransition|RecurringDateTransition)"')


class RequestRejected(Exception):
    """The request is not acceptable EWS (bad content type, not XML, schema violation)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


class SchemaValidator:
    """Microsoft's EWS schema compiled once, from a patched temporary copy."""

    def __init__(self, schema_dir: str):
        with tempfile.TemporaryDirectory(prefix="ews_sim_xsd_") as tmp:
            for name in os.listdir(schema_dir):
                if name.endswith(".xsd"):
                    shutil.copy(os.path.join(schema_dir, name), tmp)
            types_path = os.path.join(tmp, "types.xsd")
            with open(types_path, "rb") as f:
                lines = f.read().splitlines(keepends=True)
            kept = [line for line in lines if not _UPA_LINE.search(line)]
            if len(lines) - len(kept) != 3:
                print(f"ews_sim: warning: expected to drop 3 lines from types.xsd, dropped "
                      f"{len(lines) - len(kept)}", file=sys.stderr)
            with open(types_path, "wb") as f:
                f.write(b"".join(kept))
            parser = etree.XMLParser(no_network=True)
            self._schema = etree.XMLSchema(
                etree.parse(os.path.join(tmp, "ews-envelope.xsd"), parser))
        # The schema object keeps its error log per instance: serialise validations.
        self._lock = threading.Lock()

    def errors(self, root) -> list:
        """Validation errors of the document (empty list when valid)."""
        with self._lock:
            if self._schema.validate(root.getroottree()):
                return []
            return [(e.line, e.column, e.message) for e in self._schema.error_log]


def load_validator(schema_dir: str | None) -> SchemaValidator | None:
    if not schema_dir or not os.path.isfile(os.path.join(schema_dir, "ews-envelope.xsd")):
        print(SCHEMA_SKIPPED_LINE, file=sys.stderr, flush=True)
        return None
    return SchemaValidator(schema_dir)


def parse_request_xml(body: bytes):
    """Parses untrusted XML: no entity expansion, no network, no DTD at all."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False)
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise RequestRejected(f"request is not well-formed XML: {exc}",
                              *(exc.position if exc.position else (None, None))) from None
    if root.getroottree().docinfo.doctype:
        raise RequestRejected("DTD is prohibited in EWS requests")
    return root


def find_operation(root):
    """The single element inside soap:Body, or None if the envelope is malformed."""
    if root.tag != S("Envelope"):
        return None
    body = root.find(S("Body"))
    children = child_elements(body)
    if len(children) != 1:
        return None
    return children[0]


# ---------------------------------------------------------------------------
# Items: fields, ids, reading from requests and writing into responses
# ---------------------------------------------------------------------------

# Element local name -> stored key, in schema order (ItemType, then CalendarItemType or
# TaskType): responses must list fields in this order to be schema-valid.
ITEM_FIELDS = [
    ("Subject", "subject"),
    ("Body", "body"),
    ("Categories", "categories"),
    ("Importance", "importance"),
    ("ReminderDueBy", "reminder_due_by"),
    ("ReminderIsSet", "reminder_is_set"),
    ("ReminderMinutesBeforeStart", "reminder_minutes"),
]
CALENDAR_FIELDS = [
    ("Start", "start"),
    ("End", "end"),
    ("LegacyFreeBusyStatus", "legacy_free_busy"),
    ("StartTimeZone", "start_time_zone"),
    ("EndTimeZone", "end_time_zone"),
]
TASK_FIELDS = [
    ("CompleteDate", "complete_date"),
    ("DueDate", "due_date"),
    ("PercentComplete", "percent_complete"),
    ("StartDate", "start_date"),
    ("Status", "status"),
]
FIELD_KEYS = dict(ITEM_FIELDS + CALENDAR_FIELDS + TASK_FIELDS)
KIND_BY_ELEMENT = {"CalendarItem": "appointment", "Task": "task"}
ELEMENT_BY_KIND = {"appointment": "CalendarItem", "task": "Task"}
DEFAULT_FOLDER = {"appointment": "calendar", "task": "tasks"}
# FieldURI prefixes that only exist on one kind of item.
FIELD_PREFIX_KIND = {"calendar": "appointment", "task": "task"}


def new_item_id() -> str:
    # Looks like Exchange's base64 ids, and contains '+', '/' and '=' now and then,
    # so clients get their escaping exercised.
    return base64.b64encode(b"\x00\x00\x1b\x00sim" + os.urandom(60) + b"\x00").decode()


def new_change_key() -> str:
    return base64.b64encode(b"\x0f\x00\x00\x00\x16\x00\x00\x00" + os.urandom(12)).decode()


def extended_key(uri) -> str:
    """'<PropertySetId>/<PropertyName>' (GUID lower-cased: GUIDs are case-insensitive)."""
    if uri.get("PropertyTag"):
        return f"tag/{uri.get('PropertyTag').lower()}"
    set_id = uri.get("PropertySetId")
    set_id = set_id.lower() if set_id else uri.get("DistinguishedPropertySetId")
    return f"{set_id}/{uri.get('PropertyName') or uri.get('PropertyId')}"


def read_extended_property(elem):
    """(key, value) of a t:ExtendedProperty; multi-valued properties give a list."""
    key = extended_key(elem.find(T("ExtendedFieldURI")))
    values = elem.find(T("Values"))
    if values is not None:
        return key, [v.text or "" for v in child_elements(values)]
    return key, elem.findtext(T("Value")) or ""


def read_field(elem) -> dict:
    """Stored-key updates for one property element of a t:CalendarItem / t:Task."""
    name = local_name(elem)
    text = elem.text or ""
    if name == "Body":
        return {"body": text, "body_type": elem.get("BodyType")}
    if name == "Categories":
        return {"categories": [s.text or "" for s in child_elements(elem)]}
    if name in ("StartTimeZone", "EndTimeZone"):
        return {FIELD_KEYS[name]: elem.get("Id") or elem.get("Name")}
    if name == "ReminderIsSet":
        return {"reminder_is_set": parse_xml_bool(text)}
    if name == "ReminderMinutesBeforeStart":
        return {"reminder_minutes": int(text)}
    # Exchange keeps a task's Status and PercentComplete consistent; so do we.
    if name == "PercentComplete":
        percent = float(text)
        status = {0.0: "NotStarted", 100.0: "Completed"}.get(percent, "InProgress")
        return {"percent_complete": percent, "status": status}
    if name == "Status":
        return status_fields(text.strip())
    if name == "CompleteDate":          # setting it marks the task complete, as Exchange does
        return {"complete_date": text.strip(), **status_fields("Completed")}
    if name in FIELD_KEYS:
        return {FIELD_KEYS[name]: text.strip()}
    return {}


def status_fields(status: str) -> dict:
    percent = {"NotStarted": 0.0, "Completed": 100.0}.get(status)
    return {"status": status} if percent is None else {"status": status,
                                                       "percent_complete": percent}


def settle_task(item: dict) -> dict:
    """Exchange keeps CompleteDate with Status: set when a task becomes complete, gone
    when it is not complete any more."""
    if item["kind"] != "task":
        return item
    if item.get("status") != "Completed":
        item["complete_date"] = None
    elif not item.get("complete_date"):
        item["complete_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return item


def reset_field(item: dict, name: str) -> None:
    """DeleteItemField: the property goes back to 'not set'."""
    if name == "Body":
        item["body"] = item["body_type"] = None
    elif name == "Categories":
        item["categories"] = []
    elif name == "ReminderIsSet":
        item["reminder_is_set"] = False
    elif name in FIELD_KEYS:
        item[FIELD_KEYS[name]] = None
    else:
        item["other_fields"].pop(name, None)


def new_item(kind: str, mailbox: str, folder: str, elem, send_invitations, seq: int) -> dict:
    """A stored item from a t:CalendarItem / t:Task of a CreateItem request.
    Defaults are Exchange's: Normal importance, appointments Busy with a 15-minute reminder."""
    appointment = kind == "appointment"
    item = {
        "id": new_item_id(), "change_key": new_change_key(), "kind": kind,
        "mailbox": mailbox, "folder": folder,
        "subject": None, "body": None, "body_type": None, "categories": [],
        "importance": "Normal",
        "reminder_is_set": appointment, "reminder_minutes": 15 if appointment else None,
        "reminder_due_by": None,
        "start": None, "end": None, "start_time_zone": None, "end_time_zone": None,
        "legacy_free_busy": "Busy" if appointment else None,
        "due_date": None, "start_date": None, "complete_date": None,
        "status": None if appointment else "NotStarted",
        "percent_complete": None if appointment else 0.0,
        "extended_properties": {}, "other_fields": {},
        "send_meeting_invitations": send_invitations,
        "created_seq": seq, "created_time": time.time(), "updated_count": 0,
    }
    for prop in child_elements(elem):
        if local_name(prop) == "ExtendedProperty":
            key, value = read_extended_property(prop)
            item["extended_properties"][key] = value
        elif local_name(prop) in FIELD_KEYS:
            item.update(read_field(prop))
        else:
            item["other_fields"][local_name(prop)] = prop.text or ""
    return settle_task(item)


def field_text(item: dict, name: str):
    """A field's value as EWS would spell it, or None when unset (for restrictions)."""
    key = FIELD_KEYS.get(name)
    value = item.get(key) if key else item["other_fields"].get(name)
    if value is None or value == []:
        return None
    if isinstance(value, bool):
        return xml_bool(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ";".join(value)
    return str(value)


def write_field(parent, item: dict, name: str) -> None:
    key = FIELD_KEYS[name]
    value = item.get(key)
    if value is None or value == []:
        return
    if name == "Body":
        sub(parent, T("Body"), value, BodyType=item.get("body_type") or "Text")
    elif name == "Categories":
        categories = sub(parent, T("Categories"))
        for category in value:
            sub(categories, T("String"), category)
    elif name in ("StartTimeZone", "EndTimeZone"):
        sub(parent, T(name), Id=value)
    else:
        sub(parent, T(name), field_text(item, name))


def write_extended_property(parent, uri, value) -> None:
    prop = sub(parent, T("ExtendedProperty"))
    sub(prop, T("ExtendedFieldURI"), **dict(uri.attrib))
    if isinstance(value, list):
        values = sub(prop, T("Values"))
        for v in value:
            sub(values, T("Value"), v)
    else:
        sub(prop, T("Value"), value)


@dataclass
class Shape:
    """What to return about an item or folder (BaseShape + AdditionalProperties)."""
    all_fields: bool = False
    fields: set = field(default_factory=set)        # local names from FieldURI
    extended: list = field(default_factory=list)    # requested t:ExtendedFieldURI elements

    @classmethod
    def parse(cls, shape_elem) -> "Shape":
        if shape_elem is None:
            return cls(all_fields=True)
        shape = cls(all_fields=shape_elem.findtext(T("BaseShape")) != "IdOnly")
        for path in child_elements(shape_elem.find(T("AdditionalProperties"))):
            if local_name(path) == "FieldURI":
                shape.fields.add(path.get("FieldURI", "").split(":", 1)[-1])
            elif local_name(path) == "ExtendedFieldURI":
                shape.extended.append(path)
        return shape

    def wants(self, name: str) -> bool:
        return self.all_fields or name in self.fields


def write_item(parent, item: dict, shape: Shape) -> None:
    """t:CalendarItem / t:Task with t:ItemId and the fields the shape asks for."""
    elem = sub(parent, T(ELEMENT_BY_KIND[item["kind"]]))
    sub(elem, T("ItemId"), Id=item["id"], ChangeKey=item["change_key"])
    for name, _ in ITEM_FIELDS:
        if shape.wants(name):
            write_field(elem, item, name)
    # Like Exchange, extended properties come back only when asked for by URI.
    for uri in shape.extended:
        key = extended_key(uri)
        if key in item["extended_properties"]:
            write_extended_property(elem, uri, item["extended_properties"][key])
    for name, _ in CALENDAR_FIELDS if item["kind"] == "appointment" else TASK_FIELDS:
        if shape.wants(name):
            write_field(elem, item, name)


def write_item_id_only(parent, item: dict) -> None:
    elem = sub(parent, T(ELEMENT_BY_KIND[item["kind"]]))
    sub(elem, T("ItemId"), Id=item["id"], ChangeKey=item["change_key"])


# ---------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------

_FOLDER_ID_PREFIX = b"\x01\x03sim-folder\x00"
FOLDER_ELEMENTS = {"calendar": "CalendarFolder", "tasks": "TasksFolder",
                   "contacts": "ContactsFolder"}
FOLDER_NAMES = {"calendar": "Calendar", "tasks": "Tasks", "contacts": "Contacts",
                "inbox": "Inbox", "deleteditems": "Deleted Items"}


def folder_id(mailbox: str, folder: str) -> str:
    # Deterministic, so a FolderId from GetFolder can be decoded without any lookup table.
    return base64.b64encode(_FOLDER_ID_PREFIX + f"{mailbox}\x00{folder}".encode()).decode()


def decode_folder_id(value: str):
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(_FOLDER_ID_PREFIX):
        return None
    mailbox, _, folder = raw[len(_FOLDER_ID_PREFIX):].decode("utf-8", "replace").partition("\x00")
    return mailbox, folder


# ---------------------------------------------------------------------------
# Response building
# ---------------------------------------------------------------------------

ERROR_TEXTS = {
    "ErrorItemNotFound": "The specified object was not found in the store., "
                         "The process failed to get the correct properties.",
    "ErrorFolderNotFound": "The specified folder could not be found in the store.",
    "ErrorNonExistentMailbox": "The SMTP address has no mailbox associated with it.",
    "ErrorServerBusy": "The server cannot service this request right now. Try again later.",
    "ErrorInvalidRequest": "The request is invalid.",
    "ErrorSchemaValidation": "The request failed schema validation.",
    "ErrorSendMeetingInvitationsRequired":
        "SendMeetingInvitations attribute is required for calendar items.",
    "ErrorSendMeetingCancellationsRequired":
        "SendMeetingCancellations attribute is required for calendar items.",
    "ErrorSendMeetingInvitationsOrCancellationsRequired":
        "SendMeetingInvitationsOrCancellations attribute is required for calendar items.",
    "ErrorAffectedTaskOccurrencesRequired":
        "AffectedTaskOccurrences attribute is required for task items.",
    "ErrorIncorrectUpdatePropertyCount":
        "An object within a change description must contain one and only one property to modify.",
    "ErrorInvalidPropertySet": "The property set is not valid for this item type.",
    "ErrorInvalidPropertyRequest": "The property request is invalid.",
    "ErrorIrresolvableConflict": "The send or update operation could not be performed because "
                                 "the change key passed in the request does not match the "
                                 "current change key for the item.",
    "ErrorUnsupportedQueryFilter": "The restriction contains an unsupported filter.",
    "ErrorInternalServerError": "An internal server error occurred. The operation failed.",
    **ews_sync.ERROR_TEXTS,
}

# Operations whose response messages must carry an m:Items element, even when empty.
OPS_WITH_ITEMS = {"CreateItem", "GetItem", "UpdateItem"}
# Where each operation lists the things it gets one response message per.
MESSAGE_CONTAINERS = {"CreateItem": "Items", "UpdateItem": "ItemChanges",
                      "DeleteItem": "ItemIds", "GetItem": "ItemIds",
                      "FindItem": "ParentFolderIds", "GetFolder": "FolderIds"}


def new_response(op: str):
    """(envelope, m:ResponseMessages) shaped like Exchange 2016's answers."""
    envelope = etree.Element(S("Envelope"), nsmap={"s": NS_SOAP})
    header = sub(envelope, S("Header"))
    etree.SubElement(header, T("ServerVersionInfo"), nsmap={"h": NS_T}, MajorVersion="15",
                     MinorVersion="1", MajorBuildNumber="2507", MinorBuildNumber="6",
                     Version="V2017_07_11")
    body = sub(envelope, S("Body"))
    response = etree.SubElement(body, M(f"{op}Response"), nsmap={"m": NS_M, "t": NS_T})
    return envelope, sub(response, M("ResponseMessages"))


def add_success(messages, op: str):
    msg = sub(messages, M(f"{op}ResponseMessage"), ResponseClass="Success")
    sub(msg, M("ResponseCode"), "NoError")
    return msg


def add_error(messages, op: str, code: str, text: str | None = None,
              back_off_ms: int | None = None, response_class: str = "Error"):
    msg = sub(messages, M(f"{op}ResponseMessage"), ResponseClass=response_class)
    sub(msg, M("MessageText"), text or ERROR_TEXTS.get(code, code))
    sub(msg, M("ResponseCode"), code)
    sub(msg, M("DescriptiveLinkKey"), "0")
    if back_off_ms is not None:
        xml = sub(msg, M("MessageXml"))
        sub(xml, T("Value"), int(back_off_ms), Name="BackOffMilliseconds")
    if op in OPS_WITH_ITEMS:
        sub(msg, M("Items"))
    return msg


def soap_fault(code: str, text: str, back_off_ms: int | None = None,
               line: int | None = None, column: int | None = None) -> bytes:
    """HTTP-500 style SOAP fault, as Exchange sends for throttling and schema errors."""
    envelope = etree.Element(S("Envelope"), nsmap={"s": NS_SOAP})
    fault = sub(sub(envelope, S("Body")), S("Fault"))
    etree.SubElement(fault, "faultcode", nsmap={"a": NS_T}).text = f"a:{code}"
    fault_string = sub(fault, "faultstring", text)
    fault_string.set(XML_LANG, "en-US")
    detail = sub(fault, "detail")
    etree.SubElement(detail, E("ResponseCode"), nsmap={"e": NS_E}).text = code
    etree.SubElement(detail, E("Message"), nsmap={"e": NS_E}).text = text
    if back_off_ms is not None or line is not None:
        xml = etree.SubElement(detail, T("MessageXml"), nsmap={"t": NS_T})
        if back_off_ms is not None:
            sub(xml, T("Value"), int(back_off_ms), Name="BackOffMilliseconds")
        if line is not None:
            sub(xml, T("LineNumber"), line)
            sub(xml, T("LinePosition"), column or 0)
            sub(xml, T("Violation"), text)
    return serialise(envelope)


def serialise(envelope) -> bytes:
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def message_count(op_elem) -> int:
    """How many response messages Exchange would send for this request."""
    container = MESSAGE_CONTAINERS.get(local_name(op_elem))
    if container is None:
        return 1
    return max(1, len(child_elements(op_elem.find(M(container)))))


def uniform_error_response(op_elem, code: str, text: str | None = None,
                           back_off_ms: int | None = None,
                           response_class: str = "Error") -> bytes:
    """Every response message answers the same error (throttling, unknown mailbox...)."""
    op = local_name(op_elem)
    envelope, messages = new_response(op)
    for _ in range(message_count(op_elem)):
        add_error(messages, op, code, text, back_off_ms, response_class)
    return serialise(envelope)


# ---------------------------------------------------------------------------
# The store and the operations
# ---------------------------------------------------------------------------

class OperationError(Exception):
    """One response message fails with this EWS ResponseCode."""

    def __init__(self, code: str, text: str | None = None):
        super().__init__(code)
        self.code = code
        self.text = text


@dataclass
class SoapRequest:
    """What the operations need to know about one validated request."""
    op_elem: object
    op: str
    mailbox: str | None          # explicitly addressed mailbox (impersonation or folder)
    fallback_mailbox: str        # whose mailbox "calendar" means when none is addressed
    # X-PreferServerAffinity ("prefer"), X-AnchorMailbox ("anchor"), the
    # X-BackEndOverrideCookie cookie ("cookie"): routing to a mailbox server (ews_sync)
    affinity: dict = field(default_factory=dict)
    auth_user: str | None = None
    tls: bool = False
    response_headers: list = field(default_factory=list)   # extra HTTP headers to answer


class Store(ews_sync.NotificationStore, ControlStore):
    """Items, deleted items, change journal, subscriptions, request log, validation
    errors, queued faults and settings (sim_control.ControlStore, ews_sync). One lock
    guards all of it; operations run entirely under it, so each request is atomic."""

    def reset_own(self) -> None:
        self.rejections = {}         # subject text -> ResponseCode for CreateItem
        self.reset_notifications()

    def mailbox_items(self, mailbox: str, folder: str | None = None) -> list:
        return self.items_where(mailbox, "folder", folder)

    def lookup(self, item_id: str | None, mailbox: str | None) -> dict | None:
        """An item by id; with an addressed mailbox, only an item of that mailbox."""
        item = self.items.get(item_id or "")
        if item is None or (mailbox is not None and item["mailbox"] != mailbox):
            return None
        return item

    def new_id_for(self, item: dict) -> str:
        return new_item_id()

    def edit_item(self, item_id: str, fields) -> dict:
        """A person's edit in Outlook: the fields change, and so does the ChangeKey."""
        with self.lock:
            item = self.items[item_id]
            edited = copy.deepcopy(item)
            for name, value in check_edit(item, fields).items():
                edited.update(status_fields(value) if name == "status" else {name: value})
            edited["change_key"] = new_change_key()
            edited["edited_count"] = edited.get("edited_count", 0) + 1
            edited["edited_time"] = time.time()
            self.items[item_id] = settle_task(edited)
            self.record_change(edited, "modified")
            return edited

    def remove_item(self, item_id: str, hard: bool = False) -> dict:
        """A person deletes the item in Outlook: it moves to Deleted Items (a new ItemId
        there), or with hard (Shift+Del) is gone."""
        with self.lock:
            item = self.items.pop(item_id)
            self.record_removal(item, "HardDelete" if hard else "MoveToDeletedItems")
            return item

    def record_removal(self, item: dict, delete_type: str | None) -> None:
        """Journal entries for an item leaving its folder by DeleteItem or a person."""
        if delete_type == "MoveToDeletedItems":
            moved_id = new_item_id()
            self.record_change(item, "moved_from", new_id=moved_id, new_folder="deleteditems")
            self.record_change(dict(item, id=moved_id, folder="deleteditems"), "moved_to",
                               old_id=item["id"], old_folder=item["folder"])
        else:
            self.record_change(item, "deleted")


class Operations(ews_sync.SyncOperations):
    """The EWS operations. Each method adds its response messages to `messages`
    (the change-tracking ones come from ews_sync.SyncOperations)."""

    def __init__(self, store: Store):
        self.store = store

    def perform(self, request: SoapRequest) -> bytes:
        envelope, messages = new_response(request.op)
        handler = getattr(self, f"op_{request.op}", None)
        with self.store.lock:
            if request.mailbox:
                self.store.mailboxes_seen.add(request.mailbox)
            if handler is None:
                add_error(messages, request.op, "ErrorInvalidRequest",
                          f"ews_sim does not implement {request.op}.")
            else:
                handler(request, messages)
        return serialise(envelope)

    def _each(self, request: SoapRequest, messages, elements, action) -> None:
        """Runs action(elem, messages) per element; an OperationError becomes that
        element's error message, as Exchange answers item by item."""
        for elem in elements:
            try:
                action(elem, messages)
            except OperationError as exc:
                add_error(messages, request.op, exc.code, exc.text)

    def _resolve_folder(self, folder_elem, request: SoapRequest):
        """(mailbox, folder name) for a t:DistinguishedFolderId or t:FolderId."""
        if local_name(folder_elem) == "DistinguishedFolderId":
            address = folder_elem.findtext(f"{T('Mailbox')}/{T('EmailAddress')}")
            mailbox = normalise_mailbox(address) or request.mailbox or request.fallback_mailbox
            return mailbox, folder_elem.get("Id")
        decoded = decode_folder_id(folder_elem.get("Id", ""))
        if local_name(folder_elem) != "FolderId" or decoded is None:
            raise OperationError("ErrorFolderNotFound")
        return decoded

    # -- CreateItem ----------------------------------------------------------
    def op_CreateItem(self, request: SoapRequest, messages) -> None:
        op_elem = request.op_elem
        send_invitations = op_elem.get("SendMeetingInvitations")
        target = child_elements(op_elem.find(M("SavedItemFolderId")))

        def create(elem, messages):
            kind = KIND_BY_ELEMENT.get(local_name(elem))
            if kind is None:
                raise OperationError("ErrorInvalidRequest",
                                     f"ews_sim stores only CalendarItem and Task, "
                                     f"not {local_name(elem)}.")
            if kind == "appointment" and send_invitations is None:
                raise OperationError("ErrorSendMeetingInvitationsRequired")
            if target:
                mailbox, folder = self._resolve_folder(target[0], request)
            else:
                mailbox = request.mailbox or request.fallback_mailbox
                folder = DEFAULT_FOLDER[kind]
            item = new_item(kind, mailbox, folder, elem, send_invitations,
                            self.store.next_item_seq)
            for marker, code in self.store.rejections.items():
                if marker in (item.get("subject") or ""):
                    raise OperationError(code)   # this item only: its batch-mates go on
            self.store.next_item_seq += 1
            self.store.items[item["id"]] = item
            self.store.record_change(item, "created")
            self.store.mailboxes_seen.add(mailbox)
            msg = add_success(messages, "CreateItem")
            write_item_id_only(sub(msg, M("Items")), item)

        self._each(request, messages, child_elements(op_elem.find(M("Items"))), create)

    # -- GetItem -------------------------------------------------------------
    def op_GetItem(self, request: SoapRequest, messages) -> None:
        shape = Shape.parse(request.op_elem.find(M("ItemShape")))

        def get(id_elem, messages):
            item = self.store.lookup(id_elem.get("Id"), request.mailbox)
            if local_name(id_elem) != "ItemId" or item is None:
                raise OperationError("ErrorItemNotFound")
            msg = add_success(messages, "GetItem")
            write_item(sub(msg, M("Items")), item, shape)

        self._each(request, messages, child_elements(request.op_elem.find(M("ItemIds"))), get)

    # -- UpdateItem ----------------------------------------------------------
    def op_UpdateItem(self, request: SoapRequest, messages) -> None:
        op_elem = request.op_elem
        conflict_resolution = op_elem.get("ConflictResolution")
        invitations = op_elem.get("SendMeetingInvitationsOrCancellations")

        def update(change, messages):
            id_elem = change.find(T("ItemId"))
            item = self.store.lookup(id_elem.get("Id") if id_elem is not None else None,
                                     request.mailbox)
            if item is None:
                raise OperationError("ErrorItemNotFound")
            if item["kind"] == "appointment" and invitations is None:
                raise OperationError("ErrorSendMeetingInvitationsOrCancellationsRequired")
            sent_key = id_elem.get("ChangeKey")
            if (conflict_resolution == "NeverOverwrite" and sent_key
                    and sent_key != item["change_key"]):
                raise OperationError("ErrorIrresolvableConflict")
            # All updates of one ItemChange apply together or not at all.
            updated = copy.deepcopy(item)
            for update_elem in child_elements(change.find(T("Updates"))):
                apply_update(updated, update_elem)
            updated["change_key"] = new_change_key()
            updated["updated_count"] += 1
            updated["updated_time"] = time.time()
            self.store.items[item["id"]] = settle_task(updated)
            self.store.record_change(updated, "modified")
            msg = add_success(messages, "UpdateItem")
            write_item_id_only(sub(msg, M("Items")), updated)
            sub(sub(msg, M("ConflictResults")), T("Count"), "0")

        self._each(request, messages, child_elements(op_elem.find(M("ItemChanges"))), update)

    # -- DeleteItem ----------------------------------------------------------
    def op_DeleteItem(self, request: SoapRequest, messages) -> None:
        op_elem = request.op_elem

        def delete(id_elem, messages):
            item = self.store.lookup(id_elem.get("Id"), request.mailbox)
            if local_name(id_elem) != "ItemId" or item is None:
                raise OperationError("ErrorItemNotFound")
            if item["kind"] == "appointment" and op_elem.get("SendMeetingCancellations") is None:
                raise OperationError("ErrorSendMeetingCancellationsRequired")
            if item["kind"] == "task" and op_elem.get("AffectedTaskOccurrences") is None:
                raise OperationError("ErrorAffectedTaskOccurrencesRequired")
            del self.store.items[item["id"]]
            item["delete_type"] = op_elem.get("DeleteType")
            item["deleted_time"] = time.time()
            self.store.record_removal(item, item["delete_type"])
            self.store.deleted.setdefault(item["mailbox"], []).append(item)
            add_success(messages, "DeleteItem")

        self._each(request, messages, child_elements(op_elem.find(M("ItemIds"))), delete)

    # -- FindItem ------------------------------------------------------------
    def op_FindItem(self, request: SoapRequest, messages) -> None:
        op_elem = request.op_elem
        shape = Shape.parse(op_elem.find(M("ItemShape")))
        restriction = child_elements(op_elem.find(M("Restriction")))
        view = op_elem.find(M("IndexedPageItemView"))
        offset = int(view.get("Offset", "0")) if view is not None else 0
        limit = view.get("MaxEntriesReturned") if view is not None else None

        # Exchange answers one FindItemResponseMessage per parent folder.
        def find(folder_elem, messages):
            mailbox, folder = self._resolve_folder(folder_elem, request)
            candidates = self.store.mailbox_items(mailbox, folder)
            if restriction:
                # Exchange Online's search index lags behind writes (lookup_lag_ms).
                candidates = [i for i in candidates if self.store.searchable(i)]
            try:
                matches = [i for i in candidates
                           if not restriction or restriction_matches(restriction[0], i)]
            except UnsupportedFilter as exc:
                raise OperationError("ErrorUnsupportedQueryFilter",
                                     f"ews_sim does not support the restriction {exc}.") from None
            end = len(matches) if limit is None else offset + int(limit)
            page = matches[offset:end]
            msg = add_success(messages, "FindItem")
            root = sub(msg, M("RootFolder"), IndexedPagingOffset=offset + len(page),
                       TotalItemsInView=len(matches),
                       IncludesLastItemInRange=xml_bool(offset + len(page) >= len(matches)))
            items = sub(root, T("Items"))
            for item in page:
                write_item(items, item, shape)

        self._each(request, messages, child_elements(op_elem.find(M("ParentFolderIds"))), find)

    # -- GetFolder -----------------------------------------------------------
    def op_GetFolder(self, request: SoapRequest, messages) -> None:
        shape = Shape.parse(request.op_elem.find(M("FolderShape")))

        def get(folder_elem, messages):
            mailbox, folder = self._resolve_folder(folder_elem, request)
            msg = add_success(messages, "GetFolder")
            elem = sub(sub(msg, M("Folders")), T(FOLDER_ELEMENTS.get(folder, "Folder")))
            sub(elem, T("FolderId"), Id=folder_id(mailbox, folder), ChangeKey="AQAAAA==")
            if shape.wants("DisplayName"):
                sub(elem, T("DisplayName"), FOLDER_NAMES.get(folder, folder))
            if shape.wants("TotalCount"):
                sub(elem, T("TotalCount"), len(self.store.mailbox_items(mailbox, folder)))

        self._each(request, messages, child_elements(request.op_elem.find(M("FolderIds"))), get)


def apply_update(item: dict, update_elem) -> None:
    """One t:SetItemField / t:AppendToItemField / t:DeleteItemField applied to item."""
    action = local_name(update_elem)
    parts = child_elements(update_elem)
    path = parts[0]
    if local_name(path) == "ExtendedFieldURI":
        key = extended_key(path)
        if action == "DeleteItemField":
            item["extended_properties"].pop(key, None)
            return
        props = child_elements(parts[1]) if len(parts) > 1 else []
        if len(props) != 1 or local_name(props[0]) != "ExtendedProperty":
            raise OperationError("ErrorIncorrectUpdatePropertyCount")
        prop_key, value = read_extended_property(props[0])
        if prop_key != key:
            raise OperationError("ErrorIncorrectUpdatePropertyCount")
        item["extended_properties"][key] = value
        return
    if local_name(path) != "FieldURI":
        raise OperationError("ErrorInvalidPropertyRequest",
                             f"ews_sim does not support {local_name(path)} updates.")
    prefix, _, name = path.get("FieldURI", "").partition(":")
    if FIELD_PREFIX_KIND.get(prefix, item["kind"]) != item["kind"] or prefix not in (
            "item", "calendar", "task"):
        raise OperationError("ErrorInvalidPropertySet")
    if action == "DeleteItemField":
        reset_field(item, name)
        return
    props = child_elements(parts[1]) if len(parts) > 1 else []
    if len(props) != 1 or local_name(props[0]) != name:
        raise OperationError("ErrorIncorrectUpdatePropertyCount")
    if name in FIELD_KEYS:
        item.update(read_field(props[0]))
    else:
        item["other_fields"][name] = props[0].text or ""


class UnsupportedFilter(Exception):
    pass


def restriction_value(item: dict, path):
    if local_name(path) == "ExtendedFieldURI":
        value = item["extended_properties"].get(extended_key(path))
        return ";".join(value) if isinstance(value, list) else value
    if local_name(path) == "FieldURI":
        return field_text(item, path.get("FieldURI", "").partition(":")[2])
    raise UnsupportedFilter(local_name(path))


def restriction_matches(expr, item: dict) -> bool:
    """Evaluates the subset of t:Restriction that clients like ours use."""
    name = local_name(expr)
    operands = child_elements(expr)
    if name == "And":
        return all(restriction_matches(e, item) for e in operands)
    if name == "Or":
        return any(restriction_matches(e, item) for e in operands)
    if name == "Not":
        return not restriction_matches(operands[0], item)
    if name == "Exists":
        return restriction_value(item, operands[0]) is not None
    if name in ("IsEqualTo", "IsNotEqualTo"):
        constant = expr.find(f"{T('FieldURIOrConstant')}/{T('Constant')}")
        if constant is None:
            raise UnsupportedFilter(f"{name} between two properties")
        equal = restriction_value(item, operands[0]) == constant.get("Value")
        return equal if name == "IsEqualTo" else not equal
    raise UnsupportedFilter(name)


# ---------------------------------------------------------------------------
# Faults (control API)
# ---------------------------------------------------------------------------

FAULT_MODES = {"drop_after_perform", "drop_before_perform", "http_status", "server_busy",
               "server_busy_fault", "response_code", "delay", "raw"}


def check_fault(spec) -> dict:
    """Validates one POST /_sim/faults entry; returns it normalised (raises ValueError)."""
    fault = sim_control.check_fault(spec, FAULT_MODES,
                                    ("status", "retry_after", "back_off_ms", "ms"))
    if fault["mode"] == "response_code" and not isinstance(fault.get("code"), str):
        raise ValueError("response_code needs a string 'code'")
    if "body_b64" in fault:
        base64.b64decode(fault["body_b64"], validate=True)
    return fault


# ---------------------------------------------------------------------------
# Windows authentication: Negotiate (Kerberos through SPNEGO) and NTLM
# ---------------------------------------------------------------------------
# What IIS does in front of EWS with Windows authentication on: a request without
# credentials gets 401 and "WWW-Authenticate: Negotiate" (or "NTLM"); the client answers
# with a token in "Authorization". Kerberos needs one round trip; NTLM needs two on the
# same connection (NEGOTIATE -> 401 with a CHALLENGE -> AUTHENTICATE with the request).
# A connection that has authenticated stays authenticated for the requests it carries
# after (IIS's default for NTLM, and for Kerberos with authPersistNonNTLM), so a client
# may send later requests on it without "Authorization".
#
# The simulator checks no token itself; real implementations do:
#   negotiate  MIT Kerberos' GSSAPI acceptor (python3-gssapi) with the service's keytab
#              (--keytab; --principal, else any key in it), SPNEGO or raw Kerberos tokens.
#   ntlm       --ntlm-acceptor samba (default): Samba's NTLMSSP server, i.e. `ntlm_auth
#              --helper-protocol=squid-2.5-ntlmssp` (Debian package winbind) checking the
#              one account of --ntlm-users against its password, NTLMv2 only;
#              --ntlm-acceptor gss-ntlmssp: gss-ntlmssp (Debian package gss-ntlmssp, which
#              scripts/setup does not install: its /etc/gss/mech.d entry puts it into every
#              GSSAPI user on the machine) behind the GSSAPI acceptor, reading
#              --ntlm-users as NTLM_USER_FILE.
#              gss-ntlmssp 1.2 is stricter than MS-NLMP about two optional fields that
#              libcurl (like other clients) leaves out: it refuses a NEGOTIATE_MESSAGE
#              without the 8-byte Version ("Failed to decode data") and an
#              AUTHENTICATE_MESSAGE whose payload starts right after its 64-byte header,
#              before the Version and MIC fields. Windows and Samba accept both. For this
#              acceptor only, the simulator inserts those two fields empty and moves the
#              payload offsets (ntlm_with_empty_version*): no byte that is checked changes,
#              and a message that claims a MIC (MsvAvFlags) is passed on untouched.
# --ntlm-users FILE: lines DOMAIN:user:password (gss-ntlmssp's user file format).
# Each SOAP request's log entry says what happened: auth_result "accepted", "persisted"
# (the connection had authenticated before), "challenged" (401 asking for a token or
# carrying the NTLM CHALLENGE) or "refused" (401; auth_error says why, in the acceptor's
# words), auth_user (the authenticated name: "svc@REALM", "DOMAIN\\user"), auth_mech
# (Negotiate: the mechanism's OID) and ntlm_response ("NTLMv2" or "NTLMv1").

SPNEGO_OID = "1.3.6.1.5.5.2"
KRB5_OID = "1.2.840.113554.1.2.2"
NTLMSSP_OID = "1.3.6.1.4.1.311.2.2.10"
NTLMSSP_SIGNATURE = b"NTLMSSP\0"
NTLM_NEGOTIATE, NTLM_CHALLENGE, NTLM_AUTHENTICATE = 1, 2, 3
NTLM_AUTH_HEADER = 64            # AUTHENTICATE_MESSAGE up to NegotiateFlags
NTLM_AUTH_FULL_HEADER = 88       # ... plus Version (8) and MIC (16)
NTLM_NEG_FULL_HEADER = 40        # NEGOTIATE_MESSAGE with its Version
NTLM_AUTH_FIELDS = (12, 20, 28, 36, 44, 52)   # Lm, Nt, Domain, User, Workstation, SessionKey
MSV_AV_FLAGS, MSV_AV_EOL = 6, 0
MSV_AV_FLAG_MIC = 0x2


class AuthRefused(Exception):
    """The acceptor refused the token; the text says why, in its own words."""


@dataclass
class AuthStep:
    result: str                      # "accepted" or "challenged"
    user: str | None = None          # accepted: the authenticated name
    token: bytes | None = None       # to send back in WWW-Authenticate, if any
    mech: str | None = None
    ntlm_response: str | None = None


@dataclass
class AuthVerdict:
    accepted: bool
    user: str | None
    scheme: str | None
    result: str | None               # accepted, persisted, challenged, refused (None: no auth)
    error: str | None = None
    headers: list = dataclasses.field(default_factory=list)   # for the 401, or the answer when accepted
    mech: str | None = None
    ntlm_response: str | None = None


def ntlm_message_type(token: bytes) -> int:
    if len(token) < 12 or not token.startswith(NTLMSSP_SIGNATURE):
        raise AuthRefused("not an NTLMSSP message")
    return int.from_bytes(token[8:12], "little")


def ntlm_fields(token: bytes) -> list:
    """(length, offset) of each payload field of an AUTHENTICATE_MESSAGE."""
    if len(token) < NTLM_AUTH_HEADER:
        raise AuthRefused("AUTHENTICATE_MESSAGE shorter than its header")
    return [(int.from_bytes(token[at:at + 2], "little"),
             int.from_bytes(token[at + 4:at + 8], "little")) for at in NTLM_AUTH_FIELDS]


def ntlm_field(token: bytes, index: int) -> bytes:
    length, offset = ntlm_fields(token)[index]
    if offset + length > len(token):
        raise AuthRefused("AUTHENTICATE_MESSAGE field beyond its end")
    return token[offset:offset + length]


def ntlm_response_kind(token: bytes) -> str:
    """NTLMv2 (an NTProofStr and a client blob) or NTLMv1 (24 bytes) in an AUTHENTICATE."""
    return "NTLMv2" if len(ntlm_field(token, 1)) > 24 else "NTLMv1"


def ntlm_claims_mic(token: bytes) -> bool:
    """True when the NTLMv2 client blob's AV pairs say a MIC is present (MsvAvFlags 0x2)."""
    nt = ntlm_field(token, 1)
    at = 16 + 28                      # NTProofStr, then the blob's fixed part
    while at + 4 <= len(nt):
        av_id = int.from_bytes(nt[at:at + 2], "little")
        av_len = int.from_bytes(nt[at + 2:at + 4], "little")
        if av_id == MSV_AV_EOL:
            return False
        if av_id == MSV_AV_FLAGS and av_len >= 4:
            return bool(int.from_bytes(nt[at + 4:at + 8], "little") & MSV_AV_FLAG_MIC)
        at += 4 + av_len
    return False


def ntlm_with_empty_version(token: bytes) -> bytes:
    """A NEGOTIATE_MESSAGE with the (optional) Version field present, zero when absent.
    Its payload fields point at absolute offsets, so zeros at the end move nothing."""
    if len(token) >= NTLM_NEG_FULL_HEADER:
        return token
    return token + b"\0" * (NTLM_NEG_FULL_HEADER - len(token))


def ntlm_with_empty_version_and_mic(token: bytes) -> bytes:
    """An AUTHENTICATE_MESSAGE whose payload starts after Version and MIC: the missing
    ones are inserted as zeros and every field's offset moves by as much."""
    fields = ntlm_fields(token)
    start = min([offset for length, offset in fields if length] or [len(token)])
    if start >= NTLM_AUTH_FULL_HEADER or start < NTLM_AUTH_HEADER or ntlm_claims_mic(token):
        return token
    shift = NTLM_AUTH_FULL_HEADER - start
    header = bytearray(token[:start])
    for (length, offset), at in zip(fields, NTLM_AUTH_FIELDS):
        if length:
            header[at + 4:at + 8] = (offset + shift).to_bytes(4, "little")
    return bytes(header) + b"\0" * shift + token[start:]


def read_ntlm_users(path: str) -> list:
    """--ntlm-users: (domain, user, password) per line DOMAIN:user:password."""
    users = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            domain, sep1, rest = line.partition(":")
            user, sep2, password = rest.partition(":")
            if not (sep1 and sep2 and user):
                raise ValueError(f"{path}:{number}: expected DOMAIN:user:password")
            users.append((domain, user, password))
    if not users:
        raise ValueError(f"{path}: no account")
    return users


def gss_error_text(exc) -> str:
    """A GSSError's text: the major status, then the mechanism's own words."""
    return " ".join(str(exc).split())


class NegotiateAcceptor:
    """Kerberos through SPNEGO (or raw Kerberos), checked by MIT's GSSAPI with a keytab."""
    scheme = "Negotiate"

    def __init__(self, keytab: str, principal: str | None = None):
        import gssapi   # python3-gssapi: only needed for this mode
        self.gssapi = gssapi
        if not os.path.isfile(keytab):
            raise ValueError(f"keytab {keytab} does not exist")
        name = gssapi.Name(principal, gssapi.NameType.kerberos_principal) \
            if principal else None
        mechs = [gssapi.OID.from_int_seq(SPNEGO_OID), gssapi.OID.from_int_seq(KRB5_OID)]
        try:
            self.creds = gssapi.Credentials(name=name, usage="accept", mechs=mechs,
                                            store={"keytab": keytab})
        except gssapi.exceptions.GSSError as exc:
            raise ValueError(f"cannot use keytab {keytab}: {gss_error_text(exc)}") from exc

    def step(self, context, token: bytes):
        """(context to keep for a further leg, or None; AuthStep); raises AuthRefused."""
        gssapi = self.gssapi
        if context is None:
            context = gssapi.SecurityContext(creds=self.creds, usage="accept")
        try:
            out = context.step(token)
            # python-gssapi keeps an error that came with a token (SPNEGO's reject) and
            # raises it on the next use of the context: here.
            if not context.complete:
                return context, AuthStep("challenged", token=out)
            return None, AuthStep("accepted", user=str(context.initiator_name), token=out,
                                  mech=context.mech.dotted_form)
        except gssapi.exceptions.GSSError as exc:
            raise AuthRefused(gss_error_text(exc)) from exc

    def discard(self, context) -> None:
        pass


class GssNtlmsspAcceptor:
    """NTLM checked by gss-ntlmssp behind MIT's GSSAPI, against NTLM_USER_FILE."""
    scheme = "NTLM"

    def __init__(self, users_file: str):
        read_ntlm_users(users_file)            # a bad file fails at start, not per request
        os.environ["NTLM_USER_FILE"] = os.path.abspath(users_file)
        import gssapi
        self.gssapi = gssapi
        try:
            self.creds = gssapi.Credentials(usage="accept",
                                            mechs=[gssapi.OID.from_int_seq(NTLMSSP_OID)])
        except gssapi.exceptions.GSSError as exc:
            raise ValueError("gss-ntlmssp is not available (Debian package gss-ntlmssp): "
                             f"{gss_error_text(exc)}") from exc

    def step(self, context, token: bytes):
        gssapi = self.gssapi
        kind = ntlm_message_type(token)
        try:
            if kind == NTLM_NEGOTIATE:
                context = gssapi.SecurityContext(creds=self.creds, usage="accept")
                out = context.step(ntlm_with_empty_version(token))
                return context, AuthStep("challenged", token=out)
            if kind != NTLM_AUTHENTICATE:
                raise AuthRefused(f"unexpected NTLM message type {kind}")
            if context is None:
                raise AuthRefused("AUTHENTICATE_MESSAGE without a NEGOTIATE_MESSAGE on "
                                  "this connection")
            response = ntlm_response_kind(token)
            context.step(ntlm_with_empty_version_and_mic(token))
        except gssapi.exceptions.GSSError as exc:
            raise AuthRefused(gss_error_text(exc)) from exc
        if not context.complete:
            raise AuthRefused("gss-ntlmssp wants another leg after AUTHENTICATE")
        # gss-ntlmssp counts the terminating NUL in the displayed name.
        return None, AuthStep("accepted", user=str(context.initiator_name).rstrip("\0"),
                              mech=NTLMSSP_OID, ntlm_response=response)

    def discard(self, context) -> None:
        pass


class SambaNtlmAcceptor:
    """NTLM checked by Samba's NTLMSSP server: ntlm_auth's squid-2.5-ntlmssp helper
    protocol (YR NEGOTIATE -> TT CHALLENGE; KK AUTHENTICATE -> AF DOMAIN\\user | NA why),
    one helper process per handshake, checking the password of the one account given."""
    scheme = "NTLM"

    def __init__(self, users_file: str):
        users = read_ntlm_users(users_file)
        if len(users) != 1:
            raise ValueError("--ntlm-acceptor samba checks one account: give one line")
        self.domain, self.user, self.password = users[0]
        self.ntlm_auth = shutil.which("ntlm_auth") or "/usr/bin/ntlm_auth"
        if not os.access(self.ntlm_auth, os.X_OK):
            raise ValueError("ntlm_auth not found (Debian package winbind)")
        # Its own smb.conf and state folders: nothing of the system's is read or written.
        self.workdir = tempfile.mkdtemp(prefix="ews_sim-samba-")
        self.smb_conf = os.path.join(self.workdir, "smb.conf")
        with open(self.smb_conf, "w") as f:
            f.write("[global]\n"
                    f"  workgroup = {self.domain or 'EXAMPLE'}\n"
                    "  netbios name = EWS-SIM\n"
                    "  ntlm auth = ntlmv2-only\n"
                    "  lanman auth = no\n" +
                    "".join(f"  {name} = {self.workdir}\n" for name in (
                        "state directory", "cache directory", "lock directory",
                        "private dir", "pid directory", "ncalrpc dir")))

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _start_helper(self):
        # The password goes to ntlm_auth on its command line, as Samba's own tests do:
        # a test account's, on loopback.
        return subprocess.Popen(
            [self.ntlm_auth, f"--configfile={self.smb_conf}",
             "--helper-protocol=squid-2.5-ntlmssp", f"--password={self.password}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr,
            text=True, env=dict(os.environ, LC_ALL="C"))

    @staticmethod
    def _ask(helper, line: str) -> str:
        try:
            helper.stdin.write(line + "\n")
            helper.stdin.flush()
            reply = helper.stdout.readline().strip()
        except (BrokenPipeError, OSError):
            reply = ""
        if not reply:
            raise AuthRefused(f"ntlm_auth ended (status {helper.poll()})")
        return reply

    def step(self, context, token: bytes):
        kind = ntlm_message_type(token)
        encoded = base64.b64encode(token).decode()
        if kind == NTLM_NEGOTIATE:
            self.discard(context)
            helper = self._start_helper()
            reply = self._ask(helper, "YR " + encoded)
            if not reply.startswith("TT "):
                self.discard(helper)
                raise AuthRefused(f"ntlm_auth: {reply}")
            return helper, AuthStep("challenged", token=base64.b64decode(reply[3:]))
        if kind != NTLM_AUTHENTICATE:
            raise AuthRefused(f"unexpected NTLM message type {kind}")
        if context is None:
            raise AuthRefused("AUTHENTICATE_MESSAGE without a NEGOTIATE_MESSAGE on this "
                              "connection")
        try:
            response = ntlm_response_kind(token)
            reply = self._ask(context, "KK " + encoded)
        finally:
            self.discard(context)
        if reply.startswith("NA "):
            raise AuthRefused(f"ntlm_auth: {reply[3:]}")
        if not reply.startswith("AF "):
            raise AuthRefused(f"ntlm_auth: {reply}")
        name = reply[3:]
        domain, _, user = name.rpartition("\\")
        if user.lower() != self.user.lower() or \
                (domain and self.domain and domain.lower() != self.domain.lower()):
            # ntlm_auth's local check knows one password, not who may use it.
            raise AuthRefused(f"{name} is not the account in --ntlm-users")
        return None, AuthStep("accepted", user=name, mech=NTLMSSP_OID,
                              ntlm_response=response)

    def discard(self, context) -> None:
        if context is None:
            return
        try:
            context.stdin.close()
        except OSError:
            pass
        try:
            context.wait(timeout=5)
        except subprocess.TimeoutExpired:
            context.kill()
            context.wait()
        context.stdout.close()



# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

@dataclass
class SimConfig:
    users: dict | None = None             # name -> password; None = no authentication
    known_mailboxes: set | None = None    # None = every mailbox exists
    latency_ms: int = 0
    verbose: bool = False
    validator: SchemaValidator | None = None
    oauth_clients: dict | None = None     # client_id -> secret: OAuth2 bearer tokens accepted
    tokens: set = dataclasses.field(default_factory=set)   # bearer tokens issued and valid
    # --auth negotiate | ntlm: checks Windows authentication tokens (None: basic/users)
    acceptor: object | None = None


class SimServer(LoopbackServer):
    def __init__(self, port: int, config: SimConfig, ssl_context=None):
        self.config = config
        self.verbose = config.verbose
        self.store = Store()
        self.operations = Operations(self.store)
        self.ssl_context = ssl_context
        super().__init__(("127.0.0.1", port), EwsRequestHandler)

    def finish_request(self, request, client_address):
        # Runs in the connection's own thread, so a slow TLS handshake blocks nobody.
        if self.ssl_context is None:
            return super().finish_request(request, client_address)
        request.settimeout(10)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            if self.config.verbose:
                print(f"ews_sim: TLS handshake failed: {exc}", file=sys.stderr)
            return None
        tls.settimeout(None)
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class EwsRequestHandler(ews_sync.StreamingHandler, ControlHandlerMixin,
                        BaseHTTPRequestHandler):
    # Headers and body leave in separate writes: without this, Nagle's algorithm and
    # delayed ACKs add ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "ews_sim/1.0"
    sys_version = ""

    # -- plumbing ------------------------------------------------------------
    def log_message(self, format, *args):
        if self.server.config.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_DELETE(self):
        self.route()

    def do_PUT(self):
        self.route()

    def do_PATCH(self):
        self.route()

    def route(self):
        try:
            body = self.read_body()
            if body is None:
                return
            path = urlsplit(self.path).path
            if path == "/_sim" or path.startswith("/_sim/"):
                self.handle_control(path, body)
            elif path.endswith("/oauth2/v2.0/token") and self.command == "POST":
                self.handle_token(body)
            elif path.lower().endswith("/ews/exchange.asmx"):
                if self.command == "POST":
                    self.handle_soap(body)
                else:
                    self.send_bytes(405, b"EWS takes POST only\n", "text/plain",
                                    [("Allow", "POST")])
            else:
                self.send_bytes(404, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None if we already answered."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked_body()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            self.send_bytes(400, b"bad Content-Length\n", "text/plain")
            return None
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            self.send_bytes(413, b"request too large\n", "text/plain")
            return None
        return self.rfile.read(length)

    def read_chunked_body(self) -> bytes | None:
        chunks, total = [], 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                self.send_bytes(400, b"bad chunk\n", "text/plain")
                return None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_REQUEST_BYTES:
                self.close_connection = True
                self.send_bytes(413, b"request too large\n", "text/plain")
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)

    def send_bytes(self, status: int, body: bytes, content_type: str, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        # The last leg of Negotiate (mutual authentication) rides on the answer.
        for name, value in getattr(self, "auth_reply_headers", None) or ():
            self.send_header(name, value)
        self.auth_reply_headers = []
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, value) -> None:
        self.send_bytes(status, json.dumps(value, indent=1).encode() + b"\n",
                        "application/json")

    def drop_connection(self) -> None:
        """Close without a response, as when Exchange or a proxy dies mid-request."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- authentication --------------------------------------------------------
    auth_context = None       # per connection: a Negotiate/NTLM handshake under way
    connection_user = None    # per connection: who authenticated on it (IIS keeps it)

    def finish(self):
        acceptor = self.server.config.acceptor
        if acceptor is not None and self.auth_context is not None:
            acceptor.discard(self.auth_context)
            self.auth_context = None
        super().finish()

    def authenticate_windows(self) -> AuthVerdict:
        """Negotiate or NTLM, as IIS does it (see "Windows authentication" above)."""
        acceptor = self.server.config.acceptor
        challenge = [("WWW-Authenticate", acceptor.scheme)]
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.strip().partition(" ")
        if not header:
            if self.connection_user is not None:
                return AuthVerdict(True, self.connection_user, None, "persisted")
            return AuthVerdict(False, None, None, "challenged", headers=challenge)
        if scheme.lower() != acceptor.scheme.lower():
            return AuthVerdict(False, None, scheme, "refused", headers=challenge,
                               error=f"{scheme} is not accepted, only {acceptor.scheme}")
        # New credentials on the connection: whoever logged on before does not count.
        self.connection_user = None
        try:
            token = base64.b64decode(credentials.strip(), validate=True)
            if not token:
                raise AuthRefused(f"{acceptor.scheme} without a token")
            self.auth_context, step = acceptor.step(self.auth_context, token)
        except (binascii.Error, AuthRefused) as exc:
            if self.auth_context is not None:
                acceptor.discard(self.auth_context)
                self.auth_context = None
            error = str(exc) if isinstance(exc, AuthRefused) else "token is not base64"
            return AuthVerdict(False, None, scheme, "refused", error, challenge)
        reply = [("WWW-Authenticate", f"{acceptor.scheme} "
                  f"{base64.b64encode(step.token).decode()}")] if step.token else []
        if step.result != "accepted":
            return AuthVerdict(False, None, scheme, "challenged", headers=reply or challenge,
                               mech=step.mech)
        self.connection_user = step.user
        return AuthVerdict(True, step.user, scheme, "accepted", headers=reply, mech=step.mech,
                           ntlm_response=step.ntlm_response)

    def authenticate(self):
        """(accepted, user name sent, scheme sent)."""
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        user = password = None
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials.strip()).decode(
                    "utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = None
        config = self.server.config
        if scheme.lower() == "bearer" and config.oauth_clients is not None:
            return credentials.strip() in config.tokens, "bearer", scheme
        users = config.users
        if users is None:
            return True, user, scheme or None
        expected = users.get(user) if user is not None else None
        accepted = expected is not None and hmac.compare_digest(
            expected.encode(), (password or "").encode())
        return accepted, user, scheme or None

    # -- SOAP --------------------------------------------------------------------
    def handle_soap(self, body: bytes) -> None:
        config, store = self.server.config, self.server.store
        record = self.log_new_request({
            "seq": None, "time": time.time(), "op": None, "mailbox": None,
            "anchor_mailbox": self.headers.get("X-AnchorMailbox"),
            "prefer_server_affinity": self.headers.get("X-PreferServerAffinity"),
            "backend_override_cookie": self.backend_cookie(), "impersonation": False,
            "valid": None, "error": None, "auth_user": None, "auth_scheme": None,
            "auth_result": None, "auth_error": None, "auth_mech": None, "ntlm_response": None,
            "content_type": self.headers.get("Content-Type"), "http_status": None,
            "fault": None, "server_version": None, "path": self.path,
            "schema_checked": config.validator is not None,
            "body": body.decode("utf-8", "replace"),
        })
        self.auth_reply_headers = []
        if config.acceptor is not None:
            verdict = self.authenticate_windows()
            store.update_request(record, auth_user=verdict.user, auth_scheme=verdict.scheme,
                                 auth_result=verdict.result, auth_error=verdict.error,
                                 auth_mech=verdict.mech, ntlm_response=verdict.ntlm_response)
            accepted, challenge = verdict.accepted, verdict.headers
            if accepted:
                self.auth_reply_headers = verdict.headers   # Negotiate's mutual auth token
        else:
            accepted, user, scheme = self.authenticate()
            store.update_request(record, auth_user=user, auth_scheme=scheme,
                                 auth_result=None if config.users is None else
                                 "accepted" if accepted else "refused")
            challenge = [("WWW-Authenticate", 'Basic realm="EWS"')]
        if not accepted:
            # Exchange refuses before reading the body: valid stays null.
            store.update_request(record, http_status=401)
            self.send_bytes(401, b"", "text/plain", challenge)
            return

        try:
            op_elem = self.validate(body, record)
        except RequestRejected as exc:
            message = f"{record['op'] or 'request'} #{record['seq']}: {exc}"
            store.add_error(message)
            store.update_request(record, valid=False, error=str(exc), http_status=500)
            self.send_soap(500, soap_fault("ErrorSchemaValidation",
                                           f"The request failed schema validation: {exc}",
                                           line=exc.line, column=exc.column))
            return
        store.update_request(record, valid=True)

        try:
            self.answer(op_elem, record)
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:  # a simulator bug: say so loudly, answer like Exchange
            traceback.print_exc()
            store.update_request(record, error=f"ews_sim internal error: {exc!r}")
            self.send_soap(500, soap_fault("ErrorInternalServerError", str(exc)), record)

    def validate(self, body: bytes, record: dict):
        """The operation element of a well-formed, schema-valid request, else RequestRejected."""
        media_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type != "text/xml":
            raise RequestRejected(f"Content-Type must be text/xml, got "
                                  f"{self.headers.get('Content-Type')!r}")
        root = parse_request_xml(body)
        op_elem = find_operation(root)
        header = root.find(S("Header"))
        impersonation = header.find(T("ExchangeImpersonation")) if header is not None else None
        version = header.find(T("RequestServerVersion")) if header is not None else None
        mailbox = None
        if impersonation is not None:
            sid = impersonation.find(T("ConnectingSID"))
            for tag in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
                mailbox = mailbox or normalise_mailbox(
                    sid.findtext(T(tag)) if sid is not None else None)
        elif op_elem is not None:
            mailbox = normalise_mailbox(op_elem.findtext(
                f".//{T('DistinguishedFolderId')}/{T('Mailbox')}/{T('EmailAddress')}"))
        self.server.store.update_request(
            record, op=local_name(op_elem) if op_elem is not None else None,
            mailbox=mailbox, impersonation=impersonation is not None,
            server_version=version.get("Version") if version is not None else None)

        validator = self.server.config.validator
        if validator is not None:
            errors = validator.errors(root)
            if errors:
                line, column, _ = errors[0]
                text = "; ".join(f"line {ln}: {msg}" for ln, _, msg in errors)
                raise RequestRejected(text, line, column)
        if op_elem is None:
            raise RequestRejected("expected a soap:Envelope with one element in soap:Body")
        if etree.QName(op_elem).namespace != NS_M:
            raise RequestRejected(f"operation {op_elem.tag} is not in the EWS messages namespace")
        return op_elem

    def answer(self, op_elem, record: dict) -> None:
        """Applies the next matching fault, else performs the operation."""
        config, store = self.server.config, self.server.store
        op = local_name(op_elem)
        fault = store.take_fault(op, record.get("mailbox"))
        mode = fault["mode"] if fault else None
        store.update_request(record, fault=mode)

        if mode == "drop_before_perform":
            self.drop_connection()
            return
        if mode == "http_status":
            status = int(fault.get("status", 503))
            headers = [("Retry-After", str(int(fault["retry_after"])))] \
                if "retry_after" in fault else []
            text = str(fault.get("body", f"HTTP {status} from ews_sim\n"))
            self.send_soap(status, text.encode(), record,
                           fault.get("content_type", "text/plain; charset=utf-8"), headers)
            return
        if mode == "raw":
            raw = base64.b64decode(fault["body_b64"]) if "body_b64" in fault \
                else str(fault.get("body", "")).encode()
            self.send_soap(int(fault.get("status", 200)), raw, record,
                           fault.get("content_type", "text/xml; charset=utf-8"),
                           list(fault.get("headers", {}).items()))
            return
        if mode == "server_busy_fault":
            self.send_soap(500, soap_fault("ErrorServerBusy", ERROR_TEXTS["ErrorServerBusy"],
                                           back_off_ms=fault.get("back_off_ms", 1000)), record)
            return
        if mode == "server_busy":
            self.send_soap(200, uniform_error_response(
                op_elem, "ErrorServerBusy", back_off_ms=fault.get("back_off_ms", 1000)), record)
            return
        if mode == "response_code":
            self.send_soap(200, uniform_error_response(
                op_elem, fault["code"], fault.get("message"), fault.get("back_off_ms"),
                fault.get("response_class", "Error")), record)
            return

        # "delay" sleeps after performing by default: the slow answer of a done operation,
        # which is what makes a client's timeout-and-retry risk duplicates. With "when":
        # "before_perform" the operation itself happens late; with "answer": "drop" the
        # connection closes after the delay instead of answering. The sleep holds no lock.
        delay_before_perform(fault)
        mailbox = record["mailbox"]
        headers = []
        if config.known_mailboxes is not None and mailbox and \
                mailbox not in config.known_mailboxes:
            response = uniform_error_response(op_elem, "ErrorNonExistentMailbox")
        else:
            fallback = normalise_mailbox(record["auth_user"]) or "default"
            request = SoapRequest(
                op_elem, op, mailbox, fallback, affinity={
                    "prefer": (self.headers.get("X-PreferServerAffinity") or "").strip()
                    .lower() == "true",
                    "anchor": normalise_mailbox(self.headers.get("X-AnchorMailbox")),
                    "cookie": self.backend_cookie()},
                auth_user=record["auth_user"], tls=self.server.ssl_context is not None)
            if op == "GetStreamingEvents":
                if config.latency_ms:
                    time.sleep(config.latency_ms / 1000)
                self.stream_events(request, record, fault)   # a long-lived chunked answer
                return
            response = self.server.operations.perform(request)
            headers = request.response_headers
        if after_perform(fault):
            self.drop_connection()
            return
        self.send_soap(200, response, record, headers=headers)

    def backend_cookie(self) -> str | None:
        """The X-BackEndOverrideCookie cookie of the request (affinity), if any."""
        for header in self.headers.get_all("Cookie") or ():
            for pair in header.split(";"):
                name, _, value = pair.strip().partition("=")
                if name == "X-BackEndOverrideCookie":
                    return value
        return None

    def send_soap(self, status: int, body: bytes, record: dict | None = None,
                  content_type: str = "text/xml; charset=utf-8", headers=()) -> None:
        if self.server.config.latency_ms:
            time.sleep(self.server.config.latency_ms / 1000)
        if record is not None:
            self.server.store.update_request(record, http_status=status)
        self.send_bytes(status, body, content_type, headers)

    # -- control API (the shared part is sim_control.ControlHandlerMixin) -------------
    def check_fault_spec(self, spec) -> dict:
        return check_fault(spec)

    def handle_control_extra(self, method: str, path: str, body: bytes) -> bool:
        store = self.server.store
        if method == "POST" and path == "/_sim/reject-subjects":
            # {"contains": "...", "code": "ErrorQuotaExceeded"}: creates of items whose
            # subject contains the text fail with that code, one by one.
            spec = json.loads(body or b"{}")
            with store.lock:
                store.rejections[spec["contains"]] = spec.get("code", "ErrorQuotaExceeded")
            self.send_json(200, {"rejecting": spec["contains"]})
            return True
        if method == "GET" and path == "/_sim/subscriptions":
            self.send_json(200, store.subscription_list())
            return True
        if method == "POST" and path == "/_sim/revoke-tokens":
            with store.lock:
                self.server.config.tokens.clear()
            self.send_json(200, {"revoked": True})
            return True
        return False

    def handle_token(self, body: bytes) -> None:
        """OAuth2 client credentials (Entra ID's token endpoint, as far as we use it)."""
        config = self.server.config
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        clients = config.oauth_clients or {}
        record = self.log_new_request({
            "seq": None, "time": time.time(), "op": "Token", "mailbox": None,
            "anchor_mailbox": None, "impersonation": False, "valid": True, "error": None,
            "auth_user": form.get("client_id"), "auth_scheme": None,
            "content_type": self.headers.get("Content-Type"), "http_status": None,
            "fault": None, "server_version": None, "path": self.path, "schema_checked": False,
            "body": "(token request)"})
        # Faults with "ops": ["Token"]: "delay" (before_perform: the token comes late)
        # and "http_status" (the token endpoint fails).
        fault = self.server.store.take_fault("Token", None)
        self.server.store.update_request(record, fault=fault["mode"] if fault else None)
        delay_before_perform(fault)
        if fault and fault["mode"] == "http_status":
            status = int(fault.get("status", 503))
            self.server.store.update_request(record, http_status=status)
            return self.send_json(status, {"error": "temporarily_unavailable"})
        secret = clients.get(form.get("client_id", ""))
        if (form.get("grant_type") != "client_credentials" or secret is None
                or not hmac.compare_digest(secret.encode(), form.get("client_secret", "").encode())):
            self.server.store.update_request(record, http_status=401)
            return self.send_json(401, {"error": "invalid_client"})
        token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        with self.server.store.lock:
            config.tokens.add(token)
        self.server.store.update_request(record, http_status=200)
        self.send_json(200, {"token_type": "Bearer", "expires_in": 3600,
                             "access_token": token})


ews_sync.install(sys.modules[__name__])   # its helpers are this module's


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def parse_users(text: str | None) -> dict | None:
    return sim_control.parse_pairs(text, "name:password") if text else None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="ews_sim.py", description="Exchange Web Services simulator for tests.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any)")
    parser.add_argument("--port-file", help="write the bound port here (atomically)")
    parser.add_argument("--users", type=parse_users,
                        help="require HTTP Basic auth: name:password[,name:password...]")
    parser.add_argument("--auth", choices=("basic", "negotiate", "ntlm"), default="basic",
                        help="what EWS requests must authenticate with (default basic: "
                             "--users, or nothing without it)")
    parser.add_argument("--keytab", help="--auth negotiate: the service's keytab")
    parser.add_argument("--principal",
                        help="--auth negotiate: accept tickets for this principal only "
                             "(e.g. HTTP/mail.example.org@EXAMPLE.ORG; default: any key "
                             "in the keytab)")
    parser.add_argument("--ntlm-users",
                        help="--auth ntlm: accounts, one DOMAIN:user:password a line")
    parser.add_argument("--ntlm-acceptor", choices=("samba", "gss-ntlmssp"), default="samba",
                        help="--auth ntlm: Samba's ntlm_auth (default) or gss-ntlmssp")
    parser.add_argument("--schema-dir", default=os.environ.get("FOLLOWUPD_EWS_SCHEMA"),
                        help="EWS schema folder (default: $FOLLOWUPD_EWS_SCHEMA)")
    parser.add_argument("--no-schema", action="store_true", help="skip schema validation")
    parser.add_argument("--latency-ms", type=int, default=0,
                        help="extra delay before every SOAP answer")
    parser.add_argument("--known-mailboxes",
                        help="comma-separated addresses; others get ErrorNonExistentMailbox")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="private key for --tls-cert (PEM)")
    parser.add_argument("--oauth-client", type=parse_users,
                        help="accept OAuth2 bearer tokens issued at .../oauth2/v2.0/token "
                             "to these clients: id:secret[,id:secret...]")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.auth != "basic" and args.users is not None:
        parser.error("--users is for --auth basic")
    if args.auth == "negotiate" and not args.keytab:
        parser.error("--auth negotiate needs --keytab")
    if args.auth == "ntlm" and not args.ntlm_users:
        parser.error("--auth ntlm needs --ntlm-users")
    return args


def make_acceptor(args):
    """The Negotiate or NTLM acceptor for --auth, None for basic (exits on a bad setup)."""
    try:
        if args.auth == "negotiate":
            return NegotiateAcceptor(args.keytab, args.principal)
        if args.auth == "ntlm" and args.ntlm_acceptor == "gss-ntlmssp":
            return GssNtlmsspAcceptor(args.ntlm_users)
        if args.auth == "ntlm":
            return SambaNtlmAcceptor(args.ntlm_users)
    except ImportError as exc:
        sys.exit(f"ews_sim: --auth {args.auth} needs python3-gssapi: {exc}")
    except (OSError, ValueError) as exc:
        sys.exit(f"ews_sim: --auth {args.auth}: {exc}")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    validator = load_validator(None if args.no_schema else args.schema_dir)
    known = None
    if args.known_mailboxes is not None:
        known = {normalise_mailbox(a) for a in args.known_mailboxes.split(",") if a.strip()}
    config = SimConfig(users=args.users, known_mailboxes=known, latency_ms=args.latency_ms,
                       verbose=args.verbose, validator=validator, oauth_clients=args.oauth_client,
                       acceptor=make_acceptor(args))
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)

    server = SimServer(args.port, config, ssl_context)
    scheme = "https" if ssl_context else "http"
    banner = (f"ews_sim: listening on {scheme}://127.0.0.1:{server.server_address[1]}"
              f"/EWS/Exchange.asmx") if args.verbose else None
    try:
        return sim_control.serve_until_signalled(server, "ews_sim", args.port_file, banner)
    finally:
        if hasattr(config.acceptor, "close"):
            config.acceptor.close()


if __name__ == "__main__":
    sys.exit(main())
