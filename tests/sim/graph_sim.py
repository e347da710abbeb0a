#!/usr/bin/python3
"""graph_sim — a small Microsoft Graph simulator for followupd's tests and demo.

A real HTTP server on 127.0.0.1 that answers the Graph calls followupd makes for
Exchange Online — events (calendar), Microsoft To Do lists and tasks, JSON $batch —
plus an OAuth2 client-credentials token endpoint. Bearer tokens are checked on every
Graph call, request bodies are checked against the properties Graph knows, items
are kept in memory, and it can be told to misbehave (lost responses, throttling
with Retry-After, HTTP errors, expired tokens) through the same JSON control API as
ews_sim.py. Python 3 standard library only. Run with /usr/bin/python3:

  /usr/bin/python3 tests/sim/graph_sim.py --port 0 --port-file FILE
      [--clients ID:SECRET,...] [--token-lifetime SECONDS] [--latency-ms N]
      [--known-mailboxes a@x,b@y] [--verbose]

Graph (below /v1.0):
  POST   /oauth2/v2.0/token, /<tenant>/oauth2/v2.0/token    client credentials
  GET    /users/{m}/events?$filter=singleValueExtendedProperties/Any(ep: ep/id eq '...'
             and ep/value eq '...')                          FindEvents
  POST   /users/{m}/events                                   CreateEvent
  GET|PATCH|DELETE /users/{m}/events/{id}                    GetEvent|PatchEvent|DeleteEvent
  GET    /users/{m}/todo/lists[?$filter=wellknownListName eq 'defaultList']   FindLists
  GET    /users/{m}/todo/lists/{l}/tasks[?$filter=linkedResources/any(r: r/externalId
             eq '...')]                                      FindTasks
  POST   /users/{m}/todo/lists/{l}/tasks                     CreateTask
  GET|PATCH|DELETE /users/{m}/todo/lists/{l}/tasks/{id}      GetTask|PatchTask|DeleteTask
  GET    /users/{m}/calendarView/delta?startDateTime=..&endDateTime=..   EventsDelta
  GET    /users/{m}/todo/lists/{l}/tasks/delta[?$select=..]   TasksDelta
  POST   /$batch                                             Batch (at most 20 members)

Delta queries (Outlook -> CRM). Events: Graph v1.0 tracks changes to events only in a
calendarView (a start/end window) of the default calendar - `event: delta` - so that is
what is implemented; /users/{m}/events/delta exists in beta only and gets 400 here. To Do:
`todoTask: delta` on one list. Both work from the store's change journal (sim_control.py),
so changes made through Graph (by the daemon) come back as well as a person's edits
(PATCH /_sim/items/<id>), deletes and moves; the daemon tells its own by @odata.etag /
changeKey. A round: the first request (no token) lists what is there now (events: those
overlapping [startDateTime, endDateTime); deleted ones are left out), in pages of
`Prefer: odata.maxpagesize=N` entries (default 10, at most 1000; answered with
Preference-Applied), each page but the last with "@odata.nextLink" (...delta?$skiptoken=),
the last with "@odata.deltaLink" (...delta?$deltatoken=); the links are absolute, on the
host the request came to, and carry the window and $select, so the client just follows
them. The next round, from the deltaLink: every event/task touched since, in its current
representation (all properties; "@odata.type" set), or {"@odata.type", "id",
"@removed": {"reason": "deleted"}} when it is deleted, moved away, or (events) now
outside the window, even if the client never saw it - as Graph documents. An item may
come again on a later page if it changed again (Graph's "replays"). Tokens from before a
/_sim/reset, or of a mailbox after POST /_sim/expire {"mailbox", "what": "delta"
[, "code": "syncStateNotFound" (default) | "resyncRequired"]}, get 410 Gone with that
error code and a Location header with the initial query (same window) to start over; a
token that is not ours, or of another mailbox or list, is 400. Missing startDateTime/
endDateTime is 400 ErrorInvalidParameter. A task's "completedDateTime" is set while it is
completed.

Control API (JSON, no authentication), the same as ews_sim's (shared code and full
description in sim_control.py):
  GET    /_sim/mailboxes            {"mailbox": [items...]}; item fields as ews_sim's where
                                    they overlap (kind, subject, body, body_type, importance,
                                    start, end, reminder_*, legacy_free_busy, due_date,
                                    status, extended_properties, updated_count, ...), plus
                                    transaction_id (events) and due_time_zone (tasks: the
                                    dueDateTime's timeZone; due_date is its dateTime without
                                    fractional seconds, with "Z" only when the zone is UTC)
  GET    /_sim/mailboxes/<addr>     [items]
  GET    /_sim/deleted              {"mailbox": [deleted items]}
  GET    /_sim/items/<id>           one item; DELETE removes it ("user deleted it")
  PATCH  /_sim/items/<id>           {"subject", "start", "end"} of an event, {"subject",
                                    "status", "due_date", "due_time_zone"} of a task, as
                                    /_sim/mailboxes shows them: a person's edit in Outlook
                                    (new @odata.etag and lastModifiedDateTime, edited_count
                                    + 1; updated_count counts PATCH calls to Graph only);
                                    answers the item
  POST   /_sim/items/<id>/move      new id (same format), all else kept (the old id joins
                                    "previous_ids"); the old id then gets 404; answers
                                    {"id": "<new id>"}
  DELETE /_sim/lists/<addr>         the default To Do list is replaced by a new, empty one
  GET    /_sim/requests[?op=X][&body=1]   request log, oldest first (batch members too);
                                    each entry has "connection" ("ip:port") and
                                    "connection_seq" (requests the TCP connection carried
                                    before: 0 = fresh; batch members: their $batch's);
                                    a CreateEvent answered with an existing event of the
                                    same transactionId has "deduplicated": true
  GET    /_sim/errors               rejected-request reasons
  GET    /_sim/stats                {"CreateEvent": n, ...}
  POST   /_sim/reset                forget items, lists, tokens, requests, errors, faults,
                                    settings (delta tokens issued before get 410)
  POST   /_sim/expire               {"mailbox" (or "*"), "what": "delta"[, "code"]}: the
                                    mailbox's delta and skip tokens so far get 410 Gone
  GET    /_sim/sync-stats           {"changes", "delta_requests", "delta_rounds_started",
                                    "delta_links_issued", "delta_gone"}
  POST   /_sim/faults               queue {"mode", "count", "ops", "mailboxes", ...} or a list
  GET    /_sim/faults               the queue;  DELETE /_sim/faults clears it
  GET    /_sim/settings             {"ignore_connection_close": false, "lookup_lag_ms": 0}
  POST   /_sim/settings             change some: "ignore_connection_close": true keeps a
                                    connection open despite "Connection: close" and never
                                    answers "Connection: close" (as HTTP/2);
                                    "lookup_lag_ms": N hides events and tasks younger than
                                    N ms from $filter lookups (search lag; transactionId
                                    de-duplication still sees them)
Fault modes: drop_after_perform, drop_before_perform, http_status (status, retry_after,
code, message), expire_token (the next call with a valid token gets 401 and the token
is revoked), delay (ms; "when": "before_perform" performs late, default performs then
answers late; "answer": "drop" closes the connection after the delay instead of
answering), raw (status, body, content_type, headers). In a $batch, a member's fault
answers that member only (drop_* and "answer": "drop" drop the whole batch connection);
"in_batch": true makes a fault apply to $batch members only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import datetime
import functools
import hmac
import json
import os
import re
import sys
import time
import traceback
import zoneinfo
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, unquote, urlsplit

# sim_control.py sits beside this file. Run as a script, this folder is sys.path[0]
# already (unless PYTHONSAFEPATH is set); imported from elsewhere, it may not be.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import sim_control  # noqa: E402
from sim_control import (ControlHandlerMixin, ControlStore, LoopbackServer,  # noqa: E402
                         after_perform, answer_delay, check_edit, delay_before_perform,
                         drops_answer, normalise_mailbox)

API_ROOT = "/v1.0"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
BATCH_MAX = 20

DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?$")
PROPERTY_ID_RE = re.compile(r"^String \{([0-9A-Fa-f-]{36})\} Name (\S+)$")
EVENT_FILTER_RE = re.compile(
    r"^singleValueExtendedProperties/any\(ep:\s*ep/id eq '((?:[^']|'')*)' and "
    r"ep/value eq '((?:[^']|'')*)'\)$", re.IGNORECASE)
TASK_FILTER_RE = re.compile(
    r"^linkedResources/any\(r:\s*r/externalId eq '((?:[^']|'')*)'\)$", re.IGNORECASE)
LIST_FILTER_RE = re.compile(r"^wellknownListName eq '(\w+)'$", re.IGNORECASE)
MAXPAGESIZE_RE = re.compile(r"(?:^|[,;\s])odata\.maxpagesize\s*=\s*(\d+)", re.IGNORECASE)
DELTA_PAGE_DEFAULT = 10
DELTA_PAGE_MAX = 1000
DELTA_TOKEN_PREFIX = "sim1."

EVENT_FIELDS = {"subject", "body", "start", "end", "originalStartTimeZone",
                "originalEndTimeZone", "isReminderOn", "reminderMinutesBeforeStart",
                "importance", "showAs", "singleValueExtendedProperties", "attendees",
                "location", "categories", "sensitivity", "isAllDay", "transactionId"}
TASK_FIELDS = {"title", "body", "importance", "dueDateTime", "isReminderOn",
               "reminderDateTime", "status", "linkedResources", "categories",
               "startDateTime", "completedDateTime"}
LINK_FIELDS = {"webUrl", "applicationName", "displayName", "externalId"}
IMPORTANCE = {"low": "Low", "normal": "Normal", "high": "High"}
SHOW_AS = {"free": "Free", "tentative": "Tentative", "busy": "Busy", "oof": "OOF",
           "workingElsewhere": "WorkingElsewhere", "unknown": "NoData"}
TASK_STATUS = {"notStarted": "NotStarted", "inProgress": "InProgress",
               "completed": "Completed", "waitingOnOthers": "WaitingOnOthers",
               "deferred": "Deferred"}


def new_id(prefix: bytes) -> str:
    # Looks like Exchange ids and contains '+', '/' and '=' now and then, so clients
    # get their URL escaping exercised.
    return base64.b64encode(prefix + os.urandom(45) + b"\x00").decode()


def graph_error(status: int, code: str, message: str):
    return status, {"error": {"code": code, "message": message,
                              "innerError": {"date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "request-id": base64.b16encode(
                                                 os.urandom(8)).decode().lower()}}}, {}


class BadRequest(Exception):
    """The body is not what Graph accepts: 400 with this message."""


def utc_text(value, what: str) -> str:
    """'YYYY-MM-DDTHH:MM:SSZ' from a dateTimeTimeZone in UTC (what ews_sim stores)."""
    if not isinstance(value, dict) or set(value) - {"dateTime", "timeZone"}:
        raise BadRequest(f"{what} must be a dateTimeTimeZone object")
    text, zone = value.get("dateTime"), value.get("timeZone")
    if not isinstance(text, str) or not DATETIME_RE.match(text):
        raise BadRequest(f"{what}.dateTime {text!r} is not an ISO 8601 date and time")
    if zone != "UTC":
        raise BadRequest(f"{what}.timeZone must be UTC for this simulator, got {zone!r}")
    return text.split(".")[0] + "Z"


# Windows time-zone ids ("W. Europe Standard Time", "UTC", "UTC-11", "Russia Time Zone 3")
# and IANA names are what Graph accepts in a dateTimeTimeZone.
WINDOWS_ZONE_RE = re.compile(r"^(UTC([+-]\d{2})?|Russia Time Zone \d{1,2}|"
                             r"[A-Z][A-Za-z0-9 .()&'+-]* Standard Time)$")


@functools.lru_cache(maxsize=1)
def iana_zones() -> frozenset:
    return frozenset(zoneinfo.available_timezones())


def zoned_text(value, what: str) -> tuple:
    """(text, zone) from a dateTimeTimeZone in any zone Graph accepts: text is the
    dateTime without fractional seconds, with "Z" only when the zone is UTC (so a UTC
    value reads exactly as utc_text gives it)."""
    if not isinstance(value, dict) or set(value) - {"dateTime", "timeZone"}:
        raise BadRequest(f"{what} must be a dateTimeTimeZone object")
    text, zone = value.get("dateTime"), value.get("timeZone")
    if not isinstance(text, str) or not DATETIME_RE.match(text):
        raise BadRequest(f"{what}.dateTime {text!r} is not an ISO 8601 date and time")
    if not isinstance(zone, str) or not (WINDOWS_ZONE_RE.match(zone) or zone in iana_zones()):
        raise BadRequest(f"{what}.timeZone {zone!r} is not a time zone Graph knows")
    return text.split(".")[0] + ("Z" if zone == "UTC" else ""), zone


def graph_time(text: str | None, zone: str | None = "UTC"):
    if not text:
        return None
    return {"dateTime": text.rstrip("Z") + ".0000000", "timeZone": zone or "UTC"}


def graph_timestamp(seconds: float) -> str:
    """createdDateTime / lastModifiedDateTime: UTC with seven fractional digits and "Z"."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((seconds - whole) * 1e7):07d}Z"


def read_body(value, what="body"):
    if not isinstance(value, dict) or set(value) - {"contentType", "content"}:
        raise BadRequest(f"{what} must be an itemBody object")
    content_type = value.get("contentType", "text")
    if content_type not in ("html", "text"):
        raise BadRequest(f"{what}.contentType must be html or text")
    content = value.get("content", "")
    if not isinstance(content, str):
        raise BadRequest(f"{what}.content must be a string")
    return {"body": content, "body_type": "HTML" if content_type == "html" else "Text"}


def check_enum(value, allowed: dict, what: str) -> str:
    if value not in allowed:
        raise BadRequest(f"{what} must be one of {sorted(allowed)}, got {value!r}")
    return allowed[value]


def check_bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false")
    return value


def check_properties(body, allowed: set, graph_type: str) -> None:
    """A JSON object naming only properties the Graph type has."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"Could not find a property named '{sorted(unknown)[0]}' on type "
                         f"'microsoft.graph.{graph_type}'.")


def check_title(value, what: str) -> str:
    if not isinstance(value, str) or len(value) > 255:
        raise BadRequest(f"{what} must be a string of at most 255 characters")
    return value


def apply_event(item: dict, body: dict) -> None:
    """Validates an event body (create or PATCH) and applies it to item."""
    check_properties(body, EVENT_FIELDS, "event")
    changes = {}
    for name, value in body.items():
        if name == "subject":
            changes["subject"] = check_title(value, name)
        elif name == "body":
            changes.update(read_body(value))
        elif name in ("start", "end"):
            changes[name] = utc_text(value, name)
        elif name in ("originalStartTimeZone", "originalEndTimeZone"):
            if not isinstance(value, str) or not value:
                raise BadRequest(f"{name} must be a time-zone name")
            changes["start_time_zone" if name == "originalStartTimeZone"
                    else "end_time_zone"] = value
        elif name == "isReminderOn":
            changes["reminder_is_set"] = check_bool(value, name)
        elif name == "reminderMinutesBeforeStart":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadRequest("reminderMinutesBeforeStart must be a non-negative integer")
            changes["reminder_minutes"] = value
        elif name == "importance":
            changes["importance"] = check_enum(value, IMPORTANCE, name)
        elif name == "showAs":
            changes["legacy_free_busy"] = check_enum(value, SHOW_AS, name)
        elif name == "transactionId":
            if not isinstance(value, str) or not value:
                raise BadRequest("transactionId must be a non-empty string")
            if item.get("transaction_id") not in (None, value):
                raise BadRequest("transactionId cannot be changed once the event exists")
            changes["transaction_id"] = value
        elif name == "attendees":
            if not isinstance(value, list):
                raise BadRequest("attendees must be an array")
            changes["attendees"] = value
        elif name == "singleValueExtendedProperties":
            if not isinstance(value, list):
                raise BadRequest("singleValueExtendedProperties must be an array")
            props = dict(item["extended_properties"])
            for prop in value:
                if not isinstance(prop, dict) or set(prop) != {"id", "value"}:
                    raise BadRequest("each singleValueExtendedProperty needs id and value")
                match = PROPERTY_ID_RE.match(prop["id"]) if isinstance(prop["id"], str) else None
                if not match or not isinstance(prop["value"], str):
                    raise BadRequest(f"extended property id {prop['id']!r} is not "
                                     "'String {guid} Name name'")
                props[f"{match.group(1).lower()}/{match.group(2)}"] = prop["value"]
            changes["extended_properties"] = props
        else:
            changes.setdefault("other_fields", dict(item["other_fields"]))[name] = value
    if (changes.get("start") or item["start"]) and (changes.get("end") or item["end"]) and \
            (changes.get("end") or item["end"]) < (changes.get("start") or item["start"]):
        raise BadRequest("the end of an event cannot be before its start")
    item.update(changes)
    item["send_meeting_invitations"] = "SendToNone" if not item["attendees"] \
        else "SendToAllAndSaveCopy"


def apply_task(item: dict, body: dict, creating: bool) -> None:
    check_properties(body, TASK_FIELDS, "todoTask")
    changes = {}
    for name, value in body.items():
        if name == "title":
            changes["subject"] = check_title(value, name)
        elif name == "body":
            changes.update(read_body(value))
        elif name == "importance":
            changes["importance"] = check_enum(value, IMPORTANCE, name)
        elif name == "dueDateTime":
            changes["due_date"], changes["due_time_zone"] = zoned_text(value, name)
        elif name == "reminderDateTime":
            changes["reminder_due_by"] = utc_text(value, name)
        elif name == "startDateTime":
            changes["start_date"] = utc_text(value, name)
        elif name == "isReminderOn":
            changes["reminder_is_set"] = check_bool(value, name)
        elif name == "status":
            changes["status"] = check_enum(value, TASK_STATUS, name)
        elif name == "linkedResources":
            if not creating:
                raise BadRequest("linkedResources is a navigation property: it cannot be "
                                 "changed with PATCH on the task")
            if not isinstance(value, list):
                raise BadRequest("linkedResources must be an array")
            links, props = [], dict(item["extended_properties"])
            for link in value:
                if not isinstance(link, dict) or set(link) - LINK_FIELDS or \
                        not all(isinstance(v, str) for v in link.values()):
                    raise BadRequest("a linkedResource has webUrl, applicationName, "
                                     "displayName and externalId strings only")
                if not link.get("applicationName"):
                    raise BadRequest("linkedResource.applicationName is required")
                links.append(dict(link, id=new_id(b"\x02lr")))
                if link.get("externalId"):
                    # So tests find tasks and events the same way (see the docstring).
                    props["6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"] = \
                        link["externalId"]
            changes["linked_resources"] = links
            changes["extended_properties"] = props
        else:
            changes.setdefault("other_fields", dict(item["other_fields"]))[name] = value
    item.update(changes)
    if "status" in changes:
        item["percent_complete"] = {"NotStarted": 0.0, "Completed": 100.0}.get(
            item["status"], 50.0)
    settle_task(item)


def settle_task(item: dict) -> dict:
    """completedDateTime is set when a task becomes completed, gone when it is not."""
    if item.get("status") != "Completed":
        item["complete_date"] = None
    elif not item.get("complete_date"):
        item["complete_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return item


def with_times(out: dict, item: dict, select) -> dict:
    """Adds createdDateTime and lastModifiedDateTime; keeps only what $select names."""
    out["createdDateTime"] = graph_timestamp(item["created_time"])
    out["lastModifiedDateTime"] = graph_timestamp(item.get("modified_time")
                                                  or item["created_time"])
    if select:
        out = {k: v for k, v in out.items() if k in select or k in ("id", "@odata.etag")}
    return out


def event_json(item: dict, select=None) -> dict:
    out = {
        "@odata.etag": f'W/"{item["change_key"]}"', "id": item["id"],
        "changeKey": item["change_key"], "subject": item["subject"],
        "body": {"contentType": (item["body_type"] or "Text").lower(),
                 "content": item["body"] or ""},
        "start": graph_time(item["start"]), "end": graph_time(item["end"]),
        "originalStartTimeZone": item["start_time_zone"] or "UTC",
        "originalEndTimeZone": item["end_time_zone"] or "UTC",
        "isReminderOn": item["reminder_is_set"],
        "reminderMinutesBeforeStart": item["reminder_minutes"],
        "importance": (item["importance"] or "Normal").lower(),
        "showAs": {v: k for k, v in SHOW_AS.items()}.get(item["legacy_free_busy"], "busy"),
        "attendees": item["attendees"],
    }
    return with_times(out, item, select)


def task_json(item: dict, select=None) -> dict:
    out = {
        "@odata.etag": f'W/"{item["change_key"]}"', "id": item["id"],
        "title": item["subject"],
        "body": {"contentType": (item["body_type"] or "Text").lower(),
                 "content": item["body"] or ""},
        "importance": (item["importance"] or "Normal").lower(),
        "status": {v: k for k, v in TASK_STATUS.items()}.get(item["status"], "notStarted"),
        "isReminderOn": item["reminder_is_set"],
        "dueDateTime": graph_time(item["due_date"], item.get("due_time_zone")),
        "reminderDateTime": graph_time(item["reminder_due_by"]),
        "linkedResources": item["linked_resources"],
    }
    if item.get("complete_date"):
        out["completedDateTime"] = graph_time(item["complete_date"])
    return with_times(out, item, select)


def new_change_key() -> str:
    return base64.b64encode(os.urandom(12)).decode()


def new_item_id(kind: str) -> str:
    return new_id(b"\x00\x00\x1b\x00sim" if kind == "appointment" else b"\x00\x00\x1b\x00task")


def new_item(kind: str, mailbox: str, seq: int, list_id=None) -> dict:
    appointment = kind == "appointment"
    return {
        "id": new_item_id(kind),
        "change_key": new_change_key(),
        "kind": kind, "mailbox": mailbox, "folder": "calendar" if appointment else "tasks",
        "list_id": list_id,
        "subject": None, "body": None, "body_type": None, "categories": [],
        "importance": "Normal",
        "reminder_is_set": appointment, "reminder_minutes": 15 if appointment else None,
        "reminder_due_by": None,
        "start": None, "end": None, "start_time_zone": None, "end_time_zone": None,
        "legacy_free_busy": "Busy" if appointment else None, "attendees": [],
        "send_meeting_invitations": "SendToNone" if appointment else None,
        "due_date": None, "due_time_zone": None, "start_date": None, "transaction_id": None,
        "complete_date": None,
        "status": None if appointment else "NotStarted",
        "percent_complete": None if appointment else 0.0,
        "linked_resources": [], "extended_properties": {}, "other_fields": {},
        "created_seq": seq, "created_time": time.time(), "updated_count": 0,
    }


class Store(ControlStore):
    """Items, lists, tokens, change journal, request log, errors, faults and settings
    under one lock (sim_control.ControlStore)."""

    expirable = ("delta",)

    def reset_own(self) -> None:
        self.lists = {}              # mailbox -> default list id
        self.tokens = {}             # token -> (client_id, expiry)
        self.expire_next_token = 0
        self.delta_epochs = {}       # mailbox (None: all) -> (epoch, error code)
        self.delta_counts = {"delta_requests": 0, "delta_rounds_started": 0,
                             "delta_links_issued": 0, "delta_gone": 0}

    def delta_epoch(self, mailbox: str) -> list:
        return [self.delta_epochs.get(None, (0, None))[0],
                self.delta_epochs.get(mailbox, (0, None))[0]]

    def expire(self, mailbox, what: str, spec: dict) -> dict:
        code = spec.get("code", "syncStateNotFound")
        if code not in ("syncStateNotFound", "resyncRequired"):
            raise ValueError('code must be "syncStateNotFound" or "resyncRequired"')
        with self.lock:
            self.delta_epochs[mailbox] = (self.delta_epochs.get(mailbox, (0, None))[0] + 1,
                                          code)
            return {"expired": what, "mailbox": mailbox or "*", "code": code}

    def sync_stats(self) -> dict:
        with self.lock:
            return dict(self.delta_counts, changes=self.change_seq)

    def fault_matches(self, fault: dict, op: str, mailbox, in_batch: bool) -> bool:
        if fault["mode"] == "expire_token":
            return False   # handled by the token check
        if fault.get("in_batch") and not in_batch:
            return False   # meant for a $batch member only
        return super().fault_matches(fault, op, mailbox, in_batch)

    def take_expire_token(self, op: str) -> bool:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault["mode"] != "expire_token" or (fault["ops"] and op not in fault["ops"]):
                    continue
                fault["count"] -= 1 if fault["count"] > 0 else 0
                if fault["count"] == 0:
                    del self.faults[index]
                return True
            return False

    def default_list(self, mailbox: str) -> str:
        with self.lock:
            if mailbox not in self.lists:
                self.lists[mailbox] = new_id(b"\x01\x03sim-list")
            return self.lists[mailbox]

    def mailbox_items(self, mailbox: str, kind: str | None = None) -> list:
        return self.items_where(mailbox, "kind", kind)

    def new_id_for(self, item: dict) -> str:
        return new_item_id(item["kind"])

    def edit_item(self, item_id: str, fields) -> dict:
        """A person's edit in Outlook or To Do: new etag and lastModifiedDateTime."""
        with self.lock:
            item = self.items[item_id]
            fields = check_edit(item, fields, ("due_time_zone",) if item["kind"] == "task"
                                else ())
            edited = copy.deepcopy(item)
            if "due_date" in fields or "due_time_zone" in fields:
                due = fields.get("due_date", edited["due_date"])
                zone = fields.get("due_time_zone") or (
                    "UTC" if (due or "").endswith("Z") else edited["due_time_zone"] or "UTC")
                try:
                    due, zone = zoned_text({"dateTime": due.rstrip("Z"), "timeZone": zone},
                                           "due_date") if due else (None, zone)
                except BadRequest as exc:
                    raise ValueError(str(exc)) from None
                fields.update(due_date=due, due_time_zone=zone)
            edited.update(fields)
            if "status" in fields:
                edited["percent_complete"] = {"NotStarted": 0.0, "Completed": 100.0}.get(
                    edited["status"], 50.0)
            edited["change_key"] = new_change_key()
            edited["edited_count"] = edited.get("edited_count", 0) + 1
            edited["edited_time"] = edited["modified_time"] = time.time()
            if edited["kind"] == "task":
                settle_task(edited)
            self.items[item_id] = edited
            self.record_change(edited, "modified")
            return edited


def route(method: str, path: str):
    """(op, mailbox, list_id, item_id) of a Graph path below /v1.0, or None."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts == ["$batch"]:
        return ("Batch", None, None, None) if method == "POST" else None
    if len(parts) < 3 or parts[0].lower() != "users":
        return None
    mailbox = normalise_mailbox(parts[1])
    rest = parts[2:]
    if [p.lower() for p in rest] == ["calendarview", "delta"]:
        return ("EventsDelta" if method == "GET" else None), mailbox, None, None
    if rest == ["events", "delta"] and method == "GET":
        return "EventsDeltaBeta", mailbox, None, None
    if len(rest) == 5 and rest[:2] == ["todo", "lists"] and rest[3:] == ["tasks", "delta"]:
        return ("TasksDelta" if method == "GET" else None), mailbox, rest[2], None
    if rest == ["events"]:
        return {"GET": "FindEvents", "POST": "CreateEvent"}.get(method), mailbox, None, None
    if len(rest) == 2 and rest[0] == "events":
        op = {"GET": "GetEvent", "PATCH": "PatchEvent", "DELETE": "DeleteEvent"}.get(method)
        return op, mailbox, None, rest[1]
    if rest == ["todo", "lists"]:
        return ("FindLists" if method == "GET" else None), mailbox, None, None
    if len(rest) == 4 and rest[:2] == ["todo", "lists"] and rest[3] == "tasks":
        return {"GET": "FindTasks", "POST": "CreateTask"}.get(method), mailbox, rest[2], None
    if len(rest) == 5 and rest[:2] == ["todo", "lists"] and rest[3] == "tasks":
        op = {"GET": "GetTask", "PATCH": "PatchTask", "DELETE": "DeleteTask"}.get(method)
        return op, mailbox, rest[2], rest[4]
    return None


class Graph:
    """The operations: (status, JSON body or None, headers) for one call."""

    def __init__(self, store: Store, known_mailboxes):
        self.store = store
        self.known = known_mailboxes
        self.record = None      # the request log entry of the call being performed
        self.headers = {}       # its HTTP headers (lower-case names)
        self.base = None        # "http://host:port/v1.0" as the client reached us

    def perform(self, op, mailbox, list_id, item_id, query, body, record=None,
                headers=None, base=None):
        store = self.store
        with store.lock:
            if self.known is not None and mailbox not in self.known:
                return graph_error(404, "ErrorInvalidUser",
                                   f"The requested user '{mailbox}' is invalid.")
            store.mailboxes_seen.add(mailbox)
            handler = getattr(self, "op_" + op)
            # Under the lock: one call at a time.
            self.record, self.headers, self.base = record, headers or {}, base
            try:
                return handler(mailbox, list_id, item_id, query, body)
            except BadRequest as exc:
                store.errors.append(f"{op}: {exc}")
                return graph_error(400, "RequestBodyRead" if "property" in str(exc)
                                   else "ErrorInvalidRequest", str(exc))
            finally:
                self.record, self.headers, self.base = None, {}, None

    def _select(self, query):
        select = query.get("$select", [None])[0]
        return set(select.split(",")) if select else None

    def _event(self, mailbox, item_id):
        item = self.store.items.get(item_id)
        if item is None or item["mailbox"] != mailbox or item["kind"] != "appointment":
            return None
        return item

    def _task(self, mailbox, list_id, item_id):
        item = self.store.items.get(item_id)
        if item is None or item["mailbox"] != mailbox or item["kind"] != "task" or \
                item["list_id"] != list_id:
            return None
        return item

    def _no_item(self):
        return graph_error(404, "ErrorItemNotFound", "The specified object was not found in "
                           "the store.")

    def _no_list(self):
        return graph_error(404, "ErrorItemNotFound", "The specified list was not found.")

    def _store_new(self, item):
        self.store.items[item["id"]] = item
        self.store.next_item_seq += 1
        self.store.record_change(item, "created")

    def _updated(self, item):
        item["change_key"] = new_change_key()
        item["updated_count"] += 1
        item["updated_time"] = item["modified_time"] = time.time()

    def _replace(self, item):
        """A PATCHed copy takes the item's place (the change goes into the journal)."""
        self.store.items[item["id"]] = item
        self.store.record_change(item, "modified")

    def _delete(self, item):
        del self.store.items[item["id"]]
        item["deleted_time"] = time.time()
        self.store.deleted.setdefault(item["mailbox"], []).append(item)
        self.store.record_change(item, "deleted")

    # -- events ------------------------------------------------------------------
    def op_CreateEvent(self, mailbox, list_id, item_id, query, body):
        transaction = body.get("transactionId") if isinstance(body, dict) else None
        if transaction:
            # Graph drops a create it has seen before and answers with the first event
            # (a live one: search lag does not hide it here).
            for existing in self.store.mailbox_items(mailbox, "appointment"):
                if existing.get("transaction_id") == transaction:
                    self.store.errors.append(f"CreateEvent: repeated transactionId "
                                             f"{transaction} (no second event made)")
                    if self.record is not None:
                        self.record["deduplicated"] = True
                    return 201, event_json(existing), {}
        item = new_item("appointment", mailbox, self.store.next_item_seq)
        apply_event(item, body)
        if not item["start"] or not item["end"]:
            raise BadRequest("an event needs start and end")
        self._store_new(item)
        return 201, event_json(item), {}

    def op_GetEvent(self, mailbox, list_id, item_id, query, body):
        item = self._event(mailbox, item_id)
        return (200, event_json(item, self._select(query)), {}) if item else self._no_item()

    def op_PatchEvent(self, mailbox, list_id, item_id, query, body):
        item = self._event(mailbox, item_id)
        if item is None:
            return self._no_item()
        updated = copy.deepcopy(item)
        apply_event(updated, body)   # all or nothing
        self._updated(updated)
        self._replace(updated)
        return 200, event_json(updated), {}

    def op_DeleteEvent(self, mailbox, list_id, item_id, query, body):
        item = self._event(mailbox, item_id)
        if item is None:
            return self._no_item()
        self._delete(item)
        return 204, None, {}

    def op_FindEvents(self, mailbox, list_id, item_id, query, body):
        items = self.store.mailbox_items(mailbox, "appointment")
        text = query.get("$filter", [None])[0]
        if text is not None:
            match = EVENT_FILTER_RE.match(text.strip())
            if not match:
                raise BadRequest(f"graph_sim does not support the filter {text!r}")
            prop = PROPERTY_ID_RE.match(match.group(1).replace("''", "'"))
            if not prop:
                raise BadRequest(f"extended property id {match.group(1)!r} is malformed")
            key = f"{prop.group(1).lower()}/{prop.group(2)}"
            value = match.group(2).replace("''", "'")
            items = [i for i in items if i["extended_properties"].get(key) == value
                     and self.store.searchable(i)]
        select = self._select(query)
        return 200, {"value": [event_json(i, select) for i in items]}, {}

    # -- To Do -------------------------------------------------------------------
    def op_FindLists(self, mailbox, list_id, item_id, query, body):
        text = query.get("$filter", [None])[0]
        if text is not None:
            match = LIST_FILTER_RE.match(text.strip())
            if not match:
                raise BadRequest(f"graph_sim does not support the filter {text!r}")
            if match.group(1) != "defaultList":
                return 200, {"value": []}, {}
        return 200, {"value": [{"id": self.store.default_list(mailbox), "displayName": "Tasks",
                                "isOwner": True, "isShared": False,
                                "wellknownListName": "defaultList"}]}, {}

    def op_CreateTask(self, mailbox, list_id, item_id, query, body):
        if list_id != self.store.lists.get(mailbox):
            return self._no_list()
        item = new_item("task", mailbox, self.store.next_item_seq, list_id)
        apply_task(item, body, creating=True)
        self._store_new(item)
        return 201, task_json(item), {}

    def op_GetTask(self, mailbox, list_id, item_id, query, body):
        item = self._task(mailbox, list_id, item_id)
        return (200, task_json(item, self._select(query)), {}) if item else self._no_item()

    def op_PatchTask(self, mailbox, list_id, item_id, query, body):
        item = self._task(mailbox, list_id, item_id)
        if item is None:
            return self._no_item()
        updated = copy.deepcopy(item)
        apply_task(updated, body, creating=False)
        self._updated(updated)
        self._replace(updated)
        return 200, task_json(updated), {}

    def op_DeleteTask(self, mailbox, list_id, item_id, query, body):
        item = self._task(mailbox, list_id, item_id)
        if item is None:
            return self._no_item()
        self._delete(item)
        return 204, None, {}

    def op_FindTasks(self, mailbox, list_id, item_id, query, body):
        if list_id != self.store.lists.get(mailbox):
            return self._no_list()
        items = [i for i in self.store.mailbox_items(mailbox, "task") if i["list_id"] == list_id]
        text = query.get("$filter", [None])[0]
        if text is not None:
            match = TASK_FILTER_RE.match(text.strip())
            if not match:
                raise BadRequest(f"graph_sim does not support the filter {text!r}")
            wanted = match.group(1).replace("''", "'")
            items = [i for i in items
                     if any(r.get("externalId") == wanted for r in i["linked_resources"])
                     and self.store.searchable(i)]
        select = self._select(query)
        return 200, {"value": [task_json(i, select) for i in items]}, {}

    # -- delta queries -------------------------------------------------------------
    def op_EventsDeltaBeta(self, mailbox, list_id, item_id, query, body):
        return graph_error(400, "BadRequest", "events/delta is in the beta API only; v1.0 "
                           "tracks event changes with /calendarView/delta?startDateTime="
                           "...&endDateTime=...")

    def op_EventsDelta(self, mailbox, list_id, item_id, query, body):
        path = f"/users/{quote(mailbox, safe='@')}/calendarView/delta"
        state = self._delta_state(mailbox, "calendar", path, query)
        if not isinstance(state, dict):
            return state
        start, end = state["start"], state["end"]

        def live(item_id):
            item = self.store.items.get(item_id)
            return item if item is not None and item["mailbox"] == mailbox and \
                item["kind"] == "appointment" else None
        return self._delta_answer(
            mailbox, path, state, "event", lambda e: e["kind"] == "appointment", live,
            lambda item: item["start"] < end and item["end"] > start,
            lambda item: dict(event_json(item), **{"@odata.type": "#microsoft.graph.event"}))

    def op_TasksDelta(self, mailbox, list_id, item_id, query, body):
        if list_id != self.store.lists.get(mailbox):
            return self._no_list()
        path = f"/users/{quote(mailbox, safe='@')}/todo/lists/{quote(list_id, safe='')}" \
               "/tasks/delta"
        state = self._delta_state(mailbox, list_id, path, query)
        if not isinstance(state, dict):
            return state
        select = set(state["select"].split(",")) if state["select"] else None

        def live(item_id):
            item = self.store.items.get(item_id)
            return item if item is not None and item["mailbox"] == mailbox and \
                item["list_id"] == list_id else None
        return self._delta_answer(
            mailbox, path, state, "todoTask", lambda e: e["list_id"] == list_id, live,
            lambda item: True,
            lambda item: dict(task_json(item, select),
                              **{"@odata.type": "#microsoft.graph.todoTask"}))

    def _delta_state(self, mailbox, collection, path, query):
        """The round's state from $skiptoken/$deltatoken, or a fresh one from the query
        (startDateTime/endDateTime, $select); an error answer (a tuple) when refused."""
        store = self.store
        store.delta_counts["delta_requests"] += 1
        query = {k.lower(): v[0] for k, v in query.items()}
        token = query.get("$skiptoken") or query.get("$deltatoken")
        if token is None:
            state = {"collection": collection, "cursor": 0, "initial": True, "start": None,
                     "end": None, "select": query.get("$select")}
            if collection == "calendar":
                try:
                    state["start"] = window_time(query.get("startdatetime"), "startDateTime")
                    state["end"] = window_time(query.get("enddatetime"), "endDateTime")
                except BadRequest as exc:
                    store.errors.append(f"EventsDelta: {exc}")
                    return graph_error(400, "ErrorInvalidParameter", str(exc))
            store.delta_counts["delta_rounds_started"] += 1
            return state
        fields = decode_delta_token(token)
        if fields is None or fields["mailbox"] != mailbox or \
                fields["collection"] != collection:
            store.errors.append(f"delta: token {token[:40]!r} is not one of this collection")
            return graph_error(400, "BadRequest", "The delta or skip token is not valid for "
                               "this request.")
        if fields["generation"] != store.generation or \
                fields["epoch"] != store.delta_epoch(mailbox):
            store.delta_counts["delta_gone"] += 1
            code = "syncStateNotFound"       # also what a reset leads to
            if fields["generation"] == store.generation:
                # The expiry that invalidated it: every mailbox's, else this one's.
                key = None if fields["epoch"][0] != store.delta_epoch(mailbox)[0] else mailbox
                code = store.delta_epochs.get(key, (0, code))[1]
            status, answer, _ = graph_error(410, code, "The sync state generation is not "
                                            "found. The delta token is expired and data must "
                                            "be synchronized again.")
            initial = {"startDateTime": fields["start"], "endDateTime": fields["end"],
                       "$select": fields["select"]}
            initial = "&".join(f"{k}={quote(v, safe=':,')}" for k, v in initial.items() if v)
            return status, answer, {"Location": f"{self.base}{path}"
                                                + (f"?{initial}" if initial else "")}
        return fields

    def _delta_answer(self, mailbox, path, state, graph_type, belongs, live, in_view,
                      to_json):
        """One page of a delta round (see the module docstring)."""
        store = self.store
        wanted = MAXPAGESIZE_RE.search(self.headers.get("prefer", ""))
        limit = min(max(int(wanted.group(1)), 1), DELTA_PAGE_MAX) if wanted \
            else DELTA_PAGE_DEFAULT
        page, cursor, done = [], store.change_seq, True
        for info in store.touched_since(mailbox, state["cursor"], belongs):
            item = live(info["id"])
            if item is not None and in_view(item):
                entry = to_json(item)
            elif state["initial"] and (info["create"] is None
                                       or info["create"] > state["cursor"]):
                continue   # the first round shows what is there, not what went before
            else:
                entry = {"@odata.type": f"#microsoft.graph.{graph_type}", "id": info["id"],
                         "@removed": {"reason": "deleted"}}
            if len(page) == limit:
                # Everything touched before this item's first change has been answered.
                cursor, done = info["first"] - 1, False
                break
            page.append(entry)
        token = encode_delta_token(
            generation=store.generation, mailbox=mailbox,
            collection=state["collection"],
            epoch=store.delta_epoch(mailbox), cursor=cursor,
            initial=state["initial"] and not done, start=state["start"], end=state["end"],
            select=state["select"])
        answer = {"@odata.context": f"{self.base}/$metadata#Collection({graph_type})",
                  "value": page}
        if done:
            store.delta_counts["delta_links_issued"] += 1
            answer["@odata.deltaLink"] = f"{self.base}{path}?$deltatoken={token}"
        else:
            answer["@odata.nextLink"] = f"{self.base}{path}?$skiptoken={token}"
        headers = {"Preference-Applied": f"odata.maxpagesize={limit}"} if wanted else {}
        return 200, answer, headers


def window_time(text, name: str) -> str:
    """A calendarView bound as 'YYYY-MM-DDTHH:MM:SSZ' (UTC when no offset is given)."""
    if not text:
        raise BadRequest("This request requires a time window specified by the query string "
                         "parameters StartDateTime and EndDateTime.")
    value = text.strip().replace(" ", "+")      # an unescaped '+' of an offset
    value = re.sub(r"(\.\d{1,6})\d*", r"\1", value).replace("Z", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} {text!r} is not an ISO 8601 date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


DELTA_FIELDS = ("generation", "mailbox", "collection", "epoch", "cursor", "initial", "start",
                "end", "select")


def encode_delta_token(**fields) -> str:
    """Opaque and URL-safe: base64url of the round's state."""
    raw = json.dumps([fields[k] for k in DELTA_FIELDS], separators=(",", ":")).encode()
    return DELTA_TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_delta_token(token: str):
    if not token.startswith(DELTA_TOKEN_PREFIX):
        return None
    text = token[len(DELTA_TOKEN_PREFIX):]
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(values, list) or len(values) != len(DELTA_FIELDS):
        return None
    fields = dict(zip(DELTA_FIELDS, values))
    return fields if isinstance(fields["cursor"], int) else None


FAULT_MODES = {"drop_after_perform", "drop_before_perform", "http_status", "expire_token",
               "delay", "raw"}


def check_fault(spec) -> dict:
    return sim_control.check_fault(spec, FAULT_MODES)


class SimServer(LoopbackServer):
    def __init__(self, port: int, args):
        self.args = args
        self.verbose = args.verbose
        self.store = Store()
        self.graph = Graph(self.store, args.known)
        super().__init__(("127.0.0.1", port), GraphRequestHandler)


class DropConnection(Exception):
    pass


class GraphRequestHandler(ControlHandlerMixin, BaseHTTPRequestHandler):
    disable_nagle_algorithm = True   # see ews_sim.py: no 40 ms Nagle/delayed-ACK stall
    protocol_version = "HTTP/1.1"
    server_version = "graph_sim/1.0"
    sys_version = ""

    def log_message(self, format, *args):
        if self.server.args.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self.dispatch()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_GET

    def dispatch(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                self.close_connection = True
                return self.send_json(413, {"error": "request too large"})
            body = self.rfile.read(length)
            url = urlsplit(self.path)
            if url.path == "/_sim" or url.path.startswith("/_sim/"):
                return self.handle_control(url.path, body)
            if url.path.endswith("/oauth2/v2.0/token") and self.command == "POST":
                return self.handle_token(body)
            if url.path.startswith(API_ROOT + "/"):
                return self.handle_graph(url, body)
            self.send_json(404, {"error": {"code": "NotFound", "message": "no such path"}})
        except DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def api_base(self) -> str:
        """http://host:port/v1.0 as the client addressed us (for @odata.nextLink etc.)."""
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        return f"http://{host}{API_ROOT}"

    def send_json(self, status: int, obj, headers=(), content_type="application/json"):
        if self.server.args.latency_ms and not self.path.startswith("/_sim"):
            time.sleep(self.server.args.latency_ms / 1000)
        data = b"" if obj is None else (obj if isinstance(obj, bytes)
                                        else json.dumps(obj).encode())
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.client_asked_close():
            self.send_header("Connection", "close")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # -- token endpoint --------------------------------------------------------------
    def handle_token(self, body: bytes):
        store, args = self.server.store, self.server.args
        form = parse_qs(body.decode("utf-8", "replace"))
        field = lambda name: form.get(name, [None])[0]  # noqa: E731
        record = self.log_new_request({
            "seq": None, "time": time.time(), "op": "Token", "method": "POST",
            "path": self.path, "mailbox": None, "client_id": field("client_id"),
            "scope": field("scope"), "http_status": None, "auth": None, "batch": None,
            "content_type": self.headers.get("Content-Type"), "fault": None,
        })
        fault = store.take_fault("Token")
        if fault and self.apply_simple_fault(fault, record):
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        expected = args.clients.get(field("client_id") or "")
        if content_type != "application/x-www-form-urlencoded":
            status, answer = 400, {"error": "invalid_request",
                                   "error_description": "AADSTS900144: form body expected"}
        elif field("grant_type") != "client_credentials":
            status, answer = 400, {"error": "unsupported_grant_type",
                                   "error_description": "AADSTS70003: grant_type"}
        elif expected is None or not hmac.compare_digest(
                expected.encode(), (field("client_secret") or "").encode()):
            status, answer = 401, {"error": "invalid_client", "error_description":
                                   "AADSTS7000215: Invalid client secret provided."}
        elif field("scope") != GRAPH_SCOPE:
            status, answer = 400, {"error": "invalid_scope", "error_description":
                                   f"AADSTS70011: The provided scope {field('scope')!r} is "
                                   "not valid here."}
        else:
            token = base64.urlsafe_b64encode(os.urandom(48)).decode().rstrip("=")
            with store.lock:
                store.tokens[token] = (field("client_id"),
                                       time.time() + args.token_lifetime)
            status, answer = 200, {"token_type": "Bearer", "expires_in": args.token_lifetime,
                                   "ext_expires_in": args.token_lifetime,
                                   "access_token": token}
        drop = after_perform(fault)
        record["http_status"] = status
        if drop:
            raise DropConnection()
        self.send_json(status, answer)

    # -- Graph -------------------------------------------------------------------------
    def check_token(self, op: str) -> tuple:
        """(auth status, error answer or None) for the Authorization header."""
        store = self.server.store
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "missing", graph_error(401, "InvalidAuthenticationToken",
                                          "Access token is empty.")
        with store.lock:
            entry = store.tokens.get(token.strip())
            if entry is None:
                return "invalid", graph_error(401, "InvalidAuthenticationToken",
                                              "Access token validation failure.")
            if entry[1] < time.time() or store.take_expire_token(op):
                store.tokens.pop(token.strip(), None)
                return "expired", graph_error(401, "InvalidAuthenticationToken",
                                              "Lifetime validation failed, the token is "
                                              "expired.")
        return "ok", None

    def handle_graph(self, url, body: bytes):
        store = self.server.store
        path = url.path[len(API_ROOT):]
        target = route(self.command, path)
        op = target[0] if target else None
        record = self.log_new_request({
            "seq": None, "time": time.time(), "op": op or "Unknown", "method": self.command,
            "path": path, "query": url.query, "mailbox": target[1] if target else None,
            "http_status": None, "auth": None, "batch": None, "fault": None,
            "content_type": self.headers.get("Content-Type"),
            "prefer": self.headers.get("Prefer"), "valid": None,
            "body": body.decode("utf-8", "replace"),
        })
        auth, refusal = self.check_token(op or "Unknown")
        record["auth"] = auth
        if refusal:
            record["http_status"] = 401
            return self.send_json(401, refusal[1], [("WWW-Authenticate", 'Bearer realm=""')])
        if not op:
            record["http_status"] = 400
            store.errors.append(f"{self.command} {path}: no such Graph call in graph_sim")
            return self.send_json(400, graph_error(400, "BadRequest",
                                                   f"Unsupported request {path}")[1])
        if op == "Batch":
            return self.handle_batch(body, record)
        fault = store.take_fault(op, target[1])
        record["fault"] = fault["mode"] if fault else None
        if fault and self.apply_simple_fault(fault, record):
            return
        try:
            parsed = self.parse_json_body(body, op)
        except BadRequest as exc:
            record.update(http_status=400, valid=False, error=str(exc))
            store.errors.append(f"{op} #{record['seq']}: {exc}")
            return self.send_json(400, graph_error(400, "BadRequest", str(exc))[1])
        status, answer, headers = self.server.graph.perform(
            op, target[1], target[2], target[3], parse_qs(url.query), parsed, record,
            {k.lower(): v for k, v in self.headers.items()}, self.api_base())
        record["valid"] = status != 400
        drop = after_perform(fault)    # a late answer sleeps here, holding no lock
        record["http_status"] = status
        if drop:
            raise DropConnection()
        self.send_json(status, answer, list(headers.items()))

    def parse_json_body(self, body: bytes, op: str):
        if self.command not in ("POST", "PATCH"):
            return None
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise BadRequest(f"Content-Type must be application/json, got {content_type!r}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None

    def apply_simple_fault(self, fault: dict, record: dict) -> bool:
        """Faults that answer instead of performing; True when answered."""
        mode = fault["mode"]
        record["fault"] = mode
        if mode == "drop_before_perform":
            record["http_status"] = 0
            raise DropConnection()
        if mode == "http_status":
            status = int(fault.get("status", 503))
            headers = [("Retry-After", str(int(fault["retry_after"])))] \
                if "retry_after" in fault else []
            record["http_status"] = status
            self.send_json(status, graph_error(status, fault.get("code", "TooManyRequests"
                                               if status == 429 else "ServiceUnavailable"),
                                               fault.get("message", f"HTTP {status} from "
                                                         "graph_sim"))[1], headers)
            return True
        if mode == "raw":
            status = int(fault.get("status", 200))
            record["http_status"] = status
            raw = str(fault.get("body", "")).encode()
            self.send_json(status, raw, list(fault.get("headers", {}).items()),
                           fault.get("content_type", "application/json"))
            return True
        delay_before_perform(fault)
        return False

    def handle_batch(self, body: bytes, record: dict):
        store = self.server.store
        fault = store.take_fault("Batch")
        if fault and self.apply_simple_fault(fault, record):
            return
        try:
            batch = self.parse_json_body(body, "Batch")
            requests = batch.get("requests") if isinstance(batch, dict) else None
            if not isinstance(requests, list) or not requests:
                raise BadRequest("a $batch body is {\"requests\": [...]}")
            if len(requests) > BATCH_MAX:
                raise BadRequest(f"a $batch holds at most {BATCH_MAX} requests, got "
                                 f"{len(requests)}")
            ids = [r.get("id") if isinstance(r, dict) else None for r in requests]
            if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
                raise BadRequest("every $batch request needs a unique string id")
        except BadRequest as exc:
            record.update(http_status=400, valid=False, error=str(exc))
            store.errors.append(f"Batch #{record['seq']}: {exc}")
            return self.send_json(400, graph_error(400, "BadRequest", str(exc))[1])
        record.update(valid=True, members=len(requests))
        # Graph works on the members side by side: a member's late perform counts from
        # the batch's arrival and late answers are waited out once, after all of them,
        # so one slow member does not push the others later still.
        arrival, responses, drop, late = time.monotonic(), [], False, 0.0
        for member in requests:
            answer, member_fault = self.batch_member(member, record, arrival)
            responses.append(answer)
            drop = drop or drops_answer(member_fault)
            late = max(late, answer_delay(member_fault))
        time.sleep(late)
        drop = after_perform(fault) or drop   # a fault on the $batch request itself
        record["http_status"] = 200
        if drop:
            raise DropConnection()
        self.send_json(200, {"responses": responses})

    def batch_member(self, member: dict, batch_record: dict, arrival: float):
        """(response dict, the fault it took or None) for one $batch member; the caller
        waits out a late answer and drops the whole connection when the fault says so."""
        store = self.server.store
        method = str(member.get("method", "")).upper()
        url = urlsplit(str(member.get("url", "")))
        path = url.path[len(API_ROOT):] if url.path.startswith(API_ROOT + "/") else url.path
        target = route(method, path)
        op = target[0] if target else None
        record = store.log_request({
            "seq": None, "time": time.time(), "op": op or "Unknown", "method": method,
            "path": path, "query": url.query, "mailbox": target[1] if target else None,
            "http_status": None, "auth": batch_record["auth"], "batch": batch_record["seq"],
            "batch_member_id": member["id"], "fault": None, "valid": None,
            "body": json.dumps(member.get("body")) if "body" in member else "",
            # A member travels on its $batch's connection.
            "connection": batch_record["connection"],
            "connection_seq": batch_record["connection_seq"],
        })

        def answer(status, body, headers=None):
            record["http_status"] = status
            out = {"id": member["id"], "status": status, "headers": headers or {}}
            if body is not None:
                out["body"] = body
                out["headers"].setdefault("Content-Type", "application/json")
            return out

        if not op or op == "Batch":
            store.errors.append(f"$batch member {member['id']}: unsupported {method} {path}")
            return answer(400, graph_error(400, "BadRequest", f"Unsupported request {path}")[1]), \
                None
        fault = store.take_fault(op, target[1], in_batch=True)
        record["fault"] = fault["mode"] if fault else None
        mode = fault["mode"] if fault else None
        if mode == "drop_before_perform":
            return answer(0, None), fault
        if mode == "http_status":
            status = int(fault.get("status", 503))
            headers = {"Retry-After": str(int(fault["retry_after"]))} \
                if "retry_after" in fault else {}
            return answer(status, graph_error(status, fault.get(
                "code", "TooManyRequests" if status == 429 else "ServiceUnavailable"),
                fault.get("message", f"HTTP {status} from graph_sim"))[1], headers), None
        if mode == "raw":
            return answer(int(fault.get("status", 200)), fault.get("body")), None
        body = member.get("body")
        if method in ("POST", "PATCH"):
            headers = {k.lower(): v for k, v in (member.get("headers") or {}).items()}
            if not isinstance(body, dict) or headers.get("content-type", "").split(";")[0] \
                    != "application/json":
                store.errors.append(f"$batch member {member['id']}: needs a JSON body with "
                                    "Content-Type application/json")
                record["valid"] = False
                return answer(400, graph_error(400, "BadRequest", "Content-Type header must "
                                               "be application/json with a JSON body")[1]), None
        delay_before_perform(fault, since=arrival)
        status, result, headers = self.server.graph.perform(
            op, target[1], target[2], target[3], parse_qs(url.query), body, record,
            {str(k).lower(): str(v) for k, v in (member.get("headers") or {}).items()},
            self.api_base())
        record["valid"] = status != 400
        return answer(status, result, dict(headers)), fault

    # -- control API (the shared part is sim_control.ControlHandlerMixin) ---------------
    def check_fault_spec(self, spec) -> dict:
        return check_fault(spec)

    def handle_control_extra(self, method: str, path: str, body: bytes) -> bool:
        store = self.server.store
        if method == "DELETE" and path.startswith("/_sim/lists/"):
            mailbox = normalise_mailbox(unquote(path[len("/_sim/lists/"):]))
            with store.lock:
                old = store.lists.pop(mailbox, None)
                for item in [i for i in store.items.values() if i["list_id"] == old]:
                    del store.items[item["id"]]
                    store.record_change(item, "deleted")
                self.send_json(200, {"old": old, "new": store.default_list(mailbox)})
            return True
        return False


def parse_clients(text: str) -> dict:
    return sim_control.parse_pairs(text, "id:secret")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="graph_sim.py",
                                     description="Microsoft Graph simulator for tests.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any)")
    parser.add_argument("--port-file", help="write the bound port here (atomically)")
    parser.add_argument("--clients", type=parse_clients,
                        default=parse_clients("followupd-test:graph-s3cret"),
                        help="accepted OAuth2 clients: id:secret[,id:secret...]")
    parser.add_argument("--token-lifetime", type=int, default=3600,
                        help="expires_in of issued tokens, seconds")
    parser.add_argument("--latency-ms", type=int, default=0,
                        help="extra delay before every Graph answer")
    parser.add_argument("--known-mailboxes",
                        help="comma-separated addresses; others get 404 ErrorInvalidUser")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    args.known = None
    if args.known_mailboxes is not None:
        args.known = {normalise_mailbox(a) for a in args.known_mailboxes.split(",") if a.strip()}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    server = SimServer(args.port, args)
    banner = (f"graph_sim: listening on http://127.0.0.1:{server.server_address[1]}{API_ROOT}"
              if args.verbose else None)
    return sim_control.serve_until_signalled(server, "graph_sim", args.port_file, banner)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # pragma: no cover - a simulator bug: say so loudly
        traceback.print_exc()
        sys.exit(1)
