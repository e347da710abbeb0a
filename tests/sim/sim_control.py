"""sim_control — what ews_sim.py and graph_sim.py share: the JSON control API under /_sim/,
the fault queue, the request log, the settings, and the loopback server plumbing.

Both simulators run as scripts (/usr/bin/python3 tests/sim/ews_sim.py): Python puts the
script's own folder first on sys.path, so a plain `import sim_control` finds this file;
pytest (rootdir-relative imports, no __init__.py) and bench/run_bench.py put the same
folder on sys.path before importing a simulator. Python 3 standard library only.

Control API common to both simulators (JSON, no authentication):
  GET    /_sim/mailboxes            {"mailbox": [items...]} (every mailbox addressed so far)
  GET    /_sim/mailboxes/<addr>     [items] of one mailbox (address case-insensitive)
  GET    /_sim/deleted              {"mailbox": [deleted items]}
  GET    /_sim/items/<id>           one live item; DELETE removes it ("user deleted it";
                                    ?hard=1: Shift+Del, which EWS tells apart, see ews_sim)
  PATCH  /_sim/items/<id>           {"subject", "start", "end" | "status", "due_date"}: a
                                    person edits the item in Outlook (new change key);
                                    answers the item
  POST   /_sim/items/<id>/move      the item gets a new id, as when Exchange moves it to
                                    another folder or mailbox database; answers {"id": new}
  GET    /_sim/requests[?op=X][&body=1]   request log, oldest first; every entry has
                                    "connection" ("ip:port" of the client) and
                                    "connection_seq" (requests that TCP connection carried
                                    before this one: 0 = a fresh connection)
  GET    /_sim/errors               rejected-request reasons
  GET    /_sim/stats                {"op": n, ...}
  POST   /_sim/reset                forget items, requests, errors, faults and settings
  POST   /_sim/faults               queue {"mode", "count", "ops", "mailboxes", ...} or a list
  GET    /_sim/faults               the queue;  DELETE /_sim/faults clears it
  GET    /_sim/settings             {"ignore_connection_close": false, "lookup_lag_ms": 0, ...}
                                    (each simulator adds its own, listed in its docstring)
  POST   /_sim/settings             {name: value, ...}: changes those settings, answers all:
      ignore_connection_close  keep the connection open even when the request says
                               "Connection: close", and never answer "Connection: close"
                               (what an HTTP/2 hop does: the header does not exist there)
      lookup_lag_ms            an item created less than this long ago is not found by
                               lookups (EWS FindItem with a restriction, Graph $filter on
                               events and tasks): Exchange Online's search lags behind writes
  POST   /_sim/expire               {"mailbox": addr (omitted or "*": every mailbox), "what":
                                    "subscriptions" | "sync_state" | "watermark" (EWS) |
                                    "delta" (Graph)}: Exchange forgets that mailbox's change
                                    tracking positions issued so far (see each simulator for
                                    the error it then answers); answers what was expired
  GET    /_sim/sync-stats           counters of change tracking (EWS: subscriptions and open
                                    streaming connections; Graph: delta rounds and tokens)

Change journal (both simulators): every change to an item - made through the API (by the
daemon) or through the control API (a person in Outlook: PATCH, DELETE, move) - is one
entry in the store's journal, numbered by a sequence common to all mailboxes. EWS
SyncFolderItems, pull and streaming notifications and Graph delta queries are computed
from it, so a change the daemon made itself comes back as a change too (as on Exchange;
the client tells its own changes by ChangeKey / @odata.etag). Entries: "created",
"modified", "deleted", and a move as two entries: "moved_from" (old id leaves its folder)
then "moved_to" (new id arrives; "old_id", "old_folder" say where from).
Fault "delay" (both): "ms" to wait; "when": "before_perform" waits before performing the
operation (default: perform, then wait); "answer": "drop" closes the connection after the
wait instead of answering. Delays sleep in the connection's own thread, outside every lock.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_SETTINGS = {"ignore_connection_close": False, "lookup_lag_ms": 0}

# What PATCH /_sim/items/<id> may change, by kind, in /_sim/mailboxes' representation.
EDITABLE_FIELDS = {"appointment": {"subject", "start", "end"},
                   "task": {"subject", "status", "due_date"}}
TASK_STATUSES = ("NotStarted", "InProgress", "Completed", "WaitingOnOthers", "Deferred")
UTC_TEXT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
DATETIME_TEXT_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})?$")


def normalise_mailbox(address: str | None) -> str | None:
    address = (address or "").strip().lower()
    return address or None


# ---------------------------------------------------------------------------
# Faults and settings
# ---------------------------------------------------------------------------

def check_fault(spec, modes, numbers=("status", "retry_after", "ms")) -> dict:
    """Validates one POST /_sim/faults entry; returns it normalised (raises ValueError)."""
    if not isinstance(spec, dict):
        raise ValueError("a fault must be a JSON object")
    fault = dict(spec)
    if fault.get("mode") not in modes:
        raise ValueError(f"mode must be one of {sorted(modes)}")
    fault["count"] = fault.get("count", 1)
    if not isinstance(fault["count"], int) or (fault["count"] < 1 and fault["count"] != -1):
        raise ValueError("count must be a positive integer or -1")
    fault["ops"] = fault.get("ops") or []
    if not isinstance(fault["ops"], list) or not all(isinstance(o, str) for o in fault["ops"]):
        raise ValueError("ops must be a list of operation names")
    mailboxes = fault.get("mailboxes") or []
    if not isinstance(mailboxes, list) or not all(isinstance(m, str) for m in mailboxes):
        raise ValueError("mailboxes must be a list of addresses")
    fault["mailboxes"] = [m.lower() for m in mailboxes]
    for number in numbers:
        if number in fault and not isinstance(fault[number], (int, float)):
            raise ValueError(f"{number} must be a number")
    if "answer" in fault and (fault["mode"] != "delay" or fault["answer"] != "drop"):
        raise ValueError('"answer" goes with mode "delay" and can only be "drop"')
    return fault


def delay_before_perform(fault: dict | None, since: float | None = None) -> None:
    """A "delay" fault with "when": "before_perform": the operation itself comes late,
    "ms" after `since` (a time.monotonic() value; default now). Members of one $batch
    pass the batch's arrival: the server works on them side by side, so their delays
    do not add up."""
    if fault and fault["mode"] == "delay" and fault.get("when") == "before_perform":
        start = time.monotonic() if since is None else since
        time.sleep(max(0.0, start + fault.get("ms", 0) / 1000 - time.monotonic()))


def answer_delay(fault: dict | None) -> float:
    """Seconds a "delay" fault that answers late holds the answer back (0 for others)."""
    if fault and fault["mode"] == "delay" and fault.get("when") != "before_perform":
        return fault.get("ms", 0) / 1000
    return 0.0


def drops_answer(fault: dict | None) -> bool:
    """True when the connection is to be dropped instead of answered (drop_before_perform
    and drop_after_perform, or a delay with "answer": "drop")."""
    if not fault:
        return False
    return fault["mode"] in ("drop_before_perform", "drop_after_perform") or \
        (fault["mode"] == "delay" and fault.get("answer") == "drop")


def after_perform(fault: dict | None) -> bool:
    """Once the operation is done: sleeps for a "delay" fault that answers late; True when
    the connection is to be dropped instead of answered."""
    time.sleep(answer_delay(fault))
    return drops_answer(fault)


def check_number(name: str, value, minimum=0, integer=False):
    """A JSON number >= minimum (an integer when asked); raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
            or value < minimum:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} "
                         f">= {minimum}")
    return value


def check_settings(spec, extra=None) -> dict:
    """Validates a POST /_sim/settings body (raises ValueError). extra: the simulator's
    own settings, name -> (default, check(name, value) -> value)."""
    extra = extra or {}
    if not isinstance(spec, dict):
        raise ValueError("settings are a JSON object")
    checked = {}
    for name, value in spec.items():
        if name == "ignore_connection_close":
            if not isinstance(value, bool):
                raise ValueError("ignore_connection_close must be true or false")
        elif name == "lookup_lag_ms":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError("lookup_lag_ms must be a number >= 0")
        elif name in extra:
            value = extra[name][1](name, value)
        else:
            raise ValueError(f"unknown setting {name!r}; known: "
                             f"{sorted(set(DEFAULT_SETTINGS) | set(extra))}")
        checked[name] = value
    return checked


def check_edit(item: dict, fields, extra=()) -> dict:
    """Validates a PATCH /_sim/items/<id> body for this item (raises ValueError).
    extra: more field names this simulator accepts for the item's kind."""
    if not isinstance(fields, dict) or not fields:
        raise ValueError("expected a JSON object of fields to change")
    allowed = EDITABLE_FIELDS[item["kind"]] | set(extra)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"cannot change {unknown[0]!r} of a {item['kind']}; "
                         f"editable: {sorted(allowed)}")
    for name, value in fields.items():
        if name in ("subject", "due_time_zone") and (not isinstance(value, str) or
                                                     len(value) > 255):
            raise ValueError(f"{name} must be a string of at most 255 characters")
        if name in ("start", "end") and not (isinstance(value, str) and
                                             UTC_TEXT_RE.match(value)):
            raise ValueError(f"{name} must be 'YYYY-MM-DDTHH:MM:SSZ', got {value!r}")
        if name == "status" and value not in TASK_STATUSES:
            raise ValueError(f"status must be one of {list(TASK_STATUSES)}, got {value!r}")
        if name == "due_date" and not (isinstance(value, str) and
                                       DATETIME_TEXT_RE.match(value)):
            raise ValueError(f"due_date must be an ISO 8601 date and time, got {value!r}")
    if item["kind"] == "appointment":
        start, end = fields.get("start", item.get("start")), fields.get("end", item.get("end"))
        if start and end and end < start:
            raise ValueError("Outlook does not let an appointment end before it starts")
    return dict(fields)


# ---------------------------------------------------------------------------
# The store: what both simulators keep
# ---------------------------------------------------------------------------

class ControlStore:
    """Items, deleted items, change journal, request log, errors, queued faults and
    settings under one lock. Subclasses add their own state in reset_own() and say how
    ids are made."""

    # The simulator's own settings: name -> (default, check(name, value) -> value).
    extra_settings: dict = {}
    # POST /_sim/expire "what" values this simulator knows.
    expirable: tuple = ()

    def __init__(self):
        self.lock = threading.RLock()
        # Notified (under the lock) on every journal entry and on reset: long-lived
        # requests (EWS streaming notifications) wait on it.
        self.changed = threading.Condition(self.lock)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.items = {}              # id -> item
            self.deleted = {}            # mailbox -> [items]
            self.mailboxes_seen = set()
            self.requests = []
            self.errors = []
            self.faults = []
            self.settings = dict(DEFAULT_SETTINGS, **{name: default for name, (default, _)
                                                      in self.extra_settings.items()})
            self.next_item_seq = 1
            self.next_request_seq = 1
            # Tokens (sync states, watermarks, delta links) name the generation they were
            # issued in: after a reset, old ones are recognised as unknown.
            self.generation = secrets.token_hex(4)
            self.change_seq = 0
            self.changes_by_mailbox = {}     # mailbox -> [journal entries], oldest first
            self.reset_own()
            self.changed.notify_all()

    def reset_own(self) -> None:
        """The simulator's own state, forgotten on /_sim/reset."""

    # -- change journal ----------------------------------------------------------
    def record_change(self, item: dict, what: str, **extra) -> dict:
        """Appends one journal entry for item (call with the lock held)."""
        with self.lock:
            self.change_seq += 1
            entry = {"seq": self.change_seq, "time": time.time(), "what": what,
                     "mailbox": item["mailbox"], "id": item["id"],
                     "folder": item.get("folder"), "kind": item.get("kind"),
                     "list_id": item.get("list_id"), "change_key": item.get("change_key")}
            entry.update(extra)
            self.changes_by_mailbox.setdefault(item["mailbox"], []).append(entry)
            self.changed.notify_all()
            return entry

    def journal(self, mailbox: str, after: int = 0) -> list:
        """The mailbox's journal entries with seq > after (call with the lock held)."""
        entries = self.changes_by_mailbox.get(mailbox, [])
        if not after:
            return list(entries)
        low, high = 0, len(entries)
        while low < high:            # entries are in seq order: bisect on seq
            middle = (low + high) // 2
            if entries[middle]["seq"] <= after:
                low = middle + 1
            else:
                high = middle
        return entries[low:]

    def touched_since(self, mailbox: str, after: int, belongs) -> list:
        """Per item id that a journal entry of the collection (belongs(entry) is true)
        touched after seq `after`: {"id", "first" (its first such entry's seq), "create",
        "delete" (seq of its creation / removal in the collection, or None)}, ordered by
        "first". A journal entry touches one id, so no two ids share a "first"."""
        found = {}
        for entry in self.changes_by_mailbox.get(mailbox, []):
            if not belongs(entry):
                continue
            info = found.get(entry["id"])
            if info is None:
                info = found[entry["id"]] = {"id": entry["id"], "first": None,
                                             "create": None, "delete": None}
            if entry["what"] in ("created", "moved_to"):
                info["create"] = entry["seq"]
            elif entry["what"] in ("deleted", "moved_from"):
                info["delete"] = entry["seq"]
            if info["first"] is None and entry["seq"] > after:
                info["first"] = entry["seq"]
        return sorted((i for i in found.values() if i["first"] is not None),
                      key=lambda i: i["first"])

    # -- expiry and change-tracking statistics ---------------------------------------
    def expire(self, mailbox: str | None, what: str, spec: dict) -> dict:
        """POST /_sim/expire: forget positions (mailbox None: all); raises ValueError."""
        raise ValueError(f"this simulator has nothing to expire ({what!r})")

    def sync_stats(self) -> dict:
        """GET /_sim/sync-stats."""
        with self.lock:
            return {"changes": self.change_seq}

    # -- request log -------------------------------------------------------
    def log_request(self, record: dict) -> dict:
        with self.lock:
            record["seq"] = self.next_request_seq
            self.next_request_seq += 1
            self.requests.append(record)
            return record

    def update_request(self, record: dict, **changes) -> None:
        with self.lock:
            record.update(changes)

    def add_error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    # -- faults ------------------------------------------------------------
    def fault_matches(self, fault: dict, op: str, mailbox: str | None, in_batch: bool) -> bool:
        if fault["ops"] and op not in fault["ops"]:
            return False
        if fault.get("mailboxes") and (mailbox or "").lower() not in fault["mailboxes"]:
            return False
        return True

    def take_fault(self, op: str, mailbox: str | None = None,
                   in_batch: bool = False) -> dict | None:
        """First queued fault that matches; consumes one of its count (-1: never used up)."""
        with self.lock:
            for index, fault in enumerate(self.faults):
                if not self.fault_matches(fault, op, mailbox, in_batch):
                    continue
                if fault["count"] > 0:
                    fault["count"] -= 1
                    if fault["count"] == 0:
                        del self.faults[index]
                return dict(fault)
            return None

    # -- items -------------------------------------------------------------
    def items_where(self, mailbox: str, key: str | None = None, value=None) -> list:
        found = [i for i in self.items.values()
                 if i["mailbox"] == mailbox and (key is None or value is None
                                                 or i[key] == value)]
        return sorted(found, key=lambda i: i["created_seq"])

    def mailbox_items(self, mailbox: str, *filters) -> list:
        return self.items_where(mailbox)

    def snapshot_mailboxes(self) -> dict:
        with self.lock:
            names = self.mailboxes_seen | {i["mailbox"] for i in self.items.values()}
            return {name: copy.deepcopy(self.mailbox_items(name)) for name in sorted(names)}

    def searchable(self, item: dict) -> bool:
        """False while the item is younger than the lookup_lag_ms setting."""
        lag = self.settings.get("lookup_lag_ms") or 0
        return not lag or (time.time() - item["created_time"]) * 1000 >= lag

    def new_id_for(self, item: dict) -> str:
        raise NotImplementedError

    def move_item(self, item_id: str) -> dict:
        """The item under a new id (its old one is not found any more); the rest stays."""
        with self.lock:
            item = self.items.pop(item_id)
            item["previous_ids"] = item.get("previous_ids", []) + [item_id]
            new_id = self.new_id_for(item)
            self.record_change(item, "moved_from", new_id=new_id, new_folder=item["folder"])
            item["id"] = new_id
            self.items[item["id"]] = item
            self.record_change(item, "moved_to", old_id=item_id, old_folder=item["folder"])
            return item

    def remove_item(self, item_id: str, hard: bool = False) -> dict:
        """DELETE /_sim/items/<id>: a person deletes the item (hard: Shift+Del; a
        simulator may tell the two apart, as EWS does with Deleted Items)."""
        with self.lock:
            item = self.items.pop(item_id)
            self.record_change(item, "deleted")
            return item

    def edit_item(self, item_id: str, fields) -> dict:
        """PATCH /_sim/items/<id>: a person's edit (raises ValueError for a bad body)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------
# The request handler's shared part
# ---------------------------------------------------------------------------

class ControlHandlerMixin:
    """Mixed into each simulator's BaseHTTPRequestHandler subclass (listed before it).
    The subclass provides send_json(status, value), check_fault_spec(spec) and may
    handle more control paths in handle_control_extra()."""

    requests_on_connection = 0     # per handler instance, i.e. per TCP connection
    connection_seq = 0
    close_ignored = False

    def parse_request(self):
        ok = super().parse_request()
        self.connection_seq = self.requests_on_connection
        self.requests_on_connection += 1
        self.close_ignored = False
        if ok and self.close_connection and self.server.store.settings.get(
                "ignore_connection_close") and \
                (self.headers.get("Connection") or "").strip().lower() == "close":
            self.close_connection = False      # as over HTTP/2: the header is not there
            self.close_ignored = True
        return ok

    def client_asked_close(self) -> bool:
        """The request says "Connection: close" (and the settings do not ignore it)."""
        return not self.close_ignored and \
            (self.headers.get("Connection") or "").strip().lower() == "close"

    def connection_fields(self) -> dict:
        host, port = self.client_address[:2]
        return {"connection": f"{host}:{port}", "connection_seq": self.connection_seq}

    def log_new_request(self, record: dict) -> dict:
        """Adds the connection fields and appends the record to the request log."""
        record.update(self.connection_fields())
        return self.server.store.log_request(record)

    # -- /_sim/ ------------------------------------------------------------
    def handle_control(self, path: str, body: bytes) -> None:
        """JSON test hooks (no authentication); listed in the module docstrings."""
        store = self.server.store
        query = parse_qs(urlsplit(self.path).query)
        method = self.command

        if method == "GET" and path == "/_sim/mailboxes":
            return self.send_json(200, store.snapshot_mailboxes())
        if method == "GET" and path.startswith("/_sim/mailboxes/"):
            mailbox = normalise_mailbox(unquote(path[len("/_sim/mailboxes/"):]))
            with store.lock:
                return self.send_json(200, copy.deepcopy(store.mailbox_items(mailbox)))
        if path.startswith("/_sim/items/"):
            return self.handle_control_item(method, path[len("/_sim/items/"):], body)
        if method == "GET" and path == "/_sim/deleted":
            with store.lock:
                return self.send_json(200, copy.deepcopy(store.deleted))
        if method == "GET" and path == "/_sim/requests":
            with_body = query.get("body", ["0"])[0] not in ("0", "")
            op_filter = query.get("op", [None])[0]
            with store.lock:
                requests = [dict(r) for r in store.requests
                            if op_filter is None or r["op"] == op_filter]
            if not with_body:
                for r in requests:
                    r.pop("body", None)
            return self.send_json(200, requests)
        if method == "GET" and path == "/_sim/errors":
            with store.lock:
                return self.send_json(200, list(store.errors))
        if method == "GET" and path == "/_sim/stats":
            counts = {}
            with store.lock:
                for r in store.requests:
                    op = r["op"] or "unknown"
                    counts[op] = counts.get(op, 0) + 1
            return self.send_json(200, counts)
        if method == "POST" and path == "/_sim/reset":
            store.reset()
            return self.send_json(200, {"reset": True})
        if method == "POST" and path == "/_sim/expire":
            try:
                spec = json.loads(body or b"null")
                if not isinstance(spec, dict) or spec.get("what") not in store.expirable:
                    raise ValueError(f'expected {{"mailbox": ..., "what": one of '
                                     f'{list(store.expirable)}}}')
                mailbox = spec.get("mailbox")
                if mailbox is not None and not isinstance(mailbox, str):
                    raise ValueError("mailbox must be an address, or \"*\" for all")
                mailbox = None if mailbox in (None, "*") else normalise_mailbox(mailbox)
                return self.send_json(200, store.expire(mailbox, spec["what"], spec))
            except ValueError as exc:
                return self.send_json(400, {"error": str(exc)})
        if method == "GET" and path == "/_sim/sync-stats":
            return self.send_json(200, store.sync_stats())
        if path == "/_sim/faults":
            return self.handle_control_faults(method, body)
        if path == "/_sim/settings":
            return self.handle_control_settings(method, body)
        if self.handle_control_extra(method, path, body):
            return None
        return self.send_json(404, {"error": f"no control endpoint {method} {path}"})

    def handle_control_extra(self, method: str, path: str, body: bytes) -> bool:
        """The simulator's own control paths; True when it answered."""
        return False

    def handle_control_item(self, method: str, raw_id: str, body: bytes) -> None:
        """GET, DELETE, PATCH one item, or POST .../move, e.g. to play a user in Outlook.
        raw_id is still percent-encoded: an id may hold '/', so "/move" is split off first."""
        store = self.server.store
        if method == "POST" and raw_id.endswith("/move"):
            item_id = unquote(raw_id[:-len("/move")])
            with store.lock:
                if item_id not in store.items:
                    return self.send_json(404, {"error": "no such item"})
                moved = store.move_item(item_id)
                return self.send_json(200, {"id": moved["id"]})
        item_id = unquote(raw_id)
        with store.lock:
            item = store.items.get(item_id)
            if item is None:
                return self.send_json(404, {"error": "no such item"})
            if method == "DELETE":
                hard = query_flag(self.path, "hard")
                return self.send_json(200, copy.deepcopy(store.remove_item(item_id, hard)))
            if method == "GET":
                return self.send_json(200, copy.deepcopy(item))
            if method == "PATCH":
                try:
                    edited = store.edit_item(item_id, json.loads(body or b"null"))
                except ValueError as exc:
                    return self.send_json(400, {"error": str(exc)})
                return self.send_json(200, copy.deepcopy(edited))
        return self.send_json(405, {"error": "GET, PATCH or DELETE (or POST .../move)"})

    def handle_control_faults(self, method: str, body: bytes) -> None:
        store = self.server.store
        if method == "DELETE":
            with store.lock:
                cleared = len(store.faults)
                store.faults.clear()
            return self.send_json(200, {"cleared": cleared})
        if method == "GET":
            with store.lock:
                return self.send_json(200, copy.deepcopy(store.faults))
        if method != "POST":
            return self.send_json(405, {"error": "GET, POST or DELETE"})
        try:
            spec = json.loads(body or b"null")
            faults = [self.check_fault_spec(f) for f in (spec if isinstance(spec, list)
                                                         else [spec])]
        except ValueError as exc:      # binascii.Error is a ValueError too
            return self.send_json(400, {"error": str(exc)})
        with store.lock:
            store.faults.extend(faults)
            queued = copy.deepcopy(store.faults)
        return self.send_json(200, {"queued": len(faults), "faults": queued})

    def handle_control_settings(self, method: str, body: bytes) -> None:
        store = self.server.store
        if method == "POST":
            try:
                changes = check_settings(json.loads(body or b"null"), store.extra_settings)
            except ValueError as exc:
                return self.send_json(400, {"error": str(exc)})
            with store.lock:
                store.settings.update(changes)
        elif method != "GET":
            return self.send_json(405, {"error": "GET or POST"})
        with store.lock:
            return self.send_json(200, dict(store.settings))


# ---------------------------------------------------------------------------
# Server and command line plumbing
# ---------------------------------------------------------------------------

def query_flag(raw_path: str, name: str) -> bool:
    """?name=1 (or true/yes) in a request path."""
    value = parse_qs(urlsplit(raw_path).query).get(name, [""])[0].lower()
    return value in ("1", "true", "yes")


class LoopbackServer(ThreadingHTTPServer):
    """A thread per connection on 127.0.0.1: a slow answer holds up nobody else."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    verbose = False

    def server_bind(self):
        # HTTPServer.server_bind would do a reverse DNS lookup (getfqdn); skip it.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


def parse_pairs(text: str, what: str) -> dict:
    """'a:x,b:y' -> {"a": "x", "b": "y"}; what names the parts for the error message."""
    pairs = {}
    for pair in text.split(","):
        name, sep, secret = pair.partition(":")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected {what}, got {pair!r}")
        pairs[name] = secret
    return pairs


def write_port_file(path: str, port: int, prefix: str) -> None:
    """Temp file + rename, so a waiting test never reads a half-written number."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def serve_until_signalled(server, name: str, port_file: str | None, banner=None) -> int:
    """Serves until SIGTERM or SIGINT; the port goes to port_file (or stdout)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # serve_forever in a thread: shutdown() must be called from another thread than it.
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    port = server.server_address[1]
    if port_file:
        write_port_file(port_file, port, f".{name}_port.")
    else:
        print(port, flush=True)
    if banner:
        print(banner, file=sys.stderr, flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0
