"""ews_sync — change tracking for ews_sim.py: SyncFolderItems, Subscribe (pull and
streaming), GetEvents, GetStreamingEvents and Unsubscribe, as Exchange 2013+ answers them.

ews_sim.py imports this module and calls install(itself) once its XML helpers exist
(this module never imports ews_sim: run as a script, that would load it twice). Its
Store, Operations and request handler inherit the mixins below. Python 3 standard
library (plus lxml through ews_sim).

Everything is computed from the store's change journal (sim_control.py): an item
created, updated or deleted through EWS (by the daemon) or edited, deleted or moved
through the control API (a person in Outlook) is a journal entry, so the daemon's own
changes come back too, as on Exchange; it tells them by ChangeKey.

SyncFolderItems (ItemShape, SyncFolderId = DistinguishedFolderId calendar/tasks/... of
  the impersonated or addressed mailbox, or a FolderId from GetFolder; SyncState;
  Ignore; MaxChangesReturned 1..512). No SyncState: every live item as Create. With one:
  the net change of every item touched since (Create: new since; Update: changed since,
  ChangeKey new; Delete: gone since, including moved out of the folder or to Deleted
  Items), oldest change first, at most MaxChangesReturned; IncludesLastItemInRange false
  while more remain. Items in Ignore are left out. An item may come again on the next
  page if it changed again (Exchange, too, may repeat). The SyncState is opaque (base64
  of generation, mailbox, folder, epoch and journal position); one that is not ours, of
  another folder or mailbox, from before a /_sim/reset, or invalidated by POST
  /_sim/expire {"what": "sync_state"} gets ErrorInvalidSyncStateData, whose message
  still carries an empty m:SyncState and IncludesLastItemInRange (as real servers send).
  Task fields include CompleteDate (set when the task is marked complete).

Subscribe: PullSubscriptionRequest (FolderIds and/or SubscribeToAllFolders, EventTypes,
  optional Watermark to resume from, Timeout in minutes) answers SubscriptionId and
  Watermark; StreamingSubscriptionRequest answers SubscriptionId. All folders must be of
  one mailbox (else ErrorInvalidSubscriptionRequest); push subscriptions are not
  implemented (ErrorInvalidSubscriptionRequest). A Watermark from before a reset, of
  another mailbox or invalidated by /_sim/expire "watermark" is ErrorInvalidWatermark.
Events, from journal entries in a subscribed folder: CreatedEvent, ModifiedEvent (item),
  DeletedEvent (hard delete), MovedEvent (ItemId/ParentFolderId new, OldItemId/
  OldParentFolderId; a DeleteItem with MoveToDeletedItems, or a person's delete in
  Outlook, is a MovedEvent to deleteditems with a new ItemId), plus a folder
  ModifiedEvent (FolderId, ParentFolderId msgfolderroot) when a folder's item count
  changes; only the EventTypes subscribed to. Events carry the ChangeKey the item had.
GetEvents (SubscriptionId, Watermark): the events after that watermark (at most
  events_per_notification, whole journal entries, MoreEvents true when more wait), each
  with its Watermark, PreviousWatermark = the one sent; nothing new: one StatusEvent
  with the current Watermark. The last watermark the subscription was asked with stays
  valid (a retry after a lost answer replays); an older one is ErrorInvalidWatermark,
  as is one invalidated by /_sim/expire "watermark". A pull subscription not asked for
  Timeout minutes expires: ErrorExpiredSubscription (also after /_sim/expire
  "subscriptions"); an unknown or unsubscribed id: ErrorSubscriptionNotFound; a
  streaming id: ErrorInvalidPullSubscriptionId.
GetStreamingEvents (SubscriptionIds, any number, of any mailboxes: Microsoft's guidance
  groups up to 200 per connection; ConnectionTimeout 1..30 minutes): HTTP 200 with
  Transfer-Encoding: chunked, one SOAP Envelope (no XML declaration) per chunk:
  first ConnectionStatus OK at once (then the notifications already waiting), then one
  envelope per batch of events as they happen (m:Notifications, one m:Notification per
  subscription), a ConnectionStatus OK heartbeat after streaming_heartbeat_s without
  one, and at the end of ConnectionTimeout (minutes of notification_minute_s seconds)
  a last envelope with ConnectionStatus Closed, then the end of the chunked body (the
  connection stays usable). Subscription ids that are unknown (ErrorSubscriptionNotFound),
  expired (ErrorExpiredSubscription), pull ids (ErrorInvalidSubscription), taken over by
  a newer connection (ErrorNewEventStreamConnectionOpened) or unsubscribed meanwhile
  (ErrorSubscriptionUnsubscribed) are reported in an envelope with ResponseClass Error
  and m:ErrorSubscriptionIds; when no subscription is left, ConnectionStatus Closed
  follows. Events wait for a subscription while no connection is open (it expires after
  30 minutes without one), and are not sent twice: those in flight when a connection
  breaks are lost, as on Exchange. Namespaces as real servers send them:
  m:Notification (t:SubscriptionId inside) and m:ErrorSubscriptionIds/m:SubscriptionId,
  where types.xsd says t:Notification and t:SubscriptionId; the setting
  "streaming_schema_namespaces": true sends the schema's t: instead.
Unsubscribe (SubscriptionId): ends it; unknown: ErrorSubscriptionNotFound.
Affinity (Microsoft's "maintain affinity between a group of subscriptions and the
  Mailbox server"): the setting "mailbox_servers" (default 1) is how many mailbox
  servers hold subscriptions. A request goes to the server of its
  X-BackEndOverrideCookie cookie when it also says X-PreferServerAffinity: true, else
  to that of X-AnchorMailbox, else to that of the mailbox it impersonates (a stable hash
  of the address). A Subscribe with X-PreferServerAffinity: true and no valid cookie
  gets "Set-Cookie: X-BackEndOverrideCookie=<server>~<n>; path=/; HttpOnly" ("secure"
  too over TLS). GetEvents, GetStreamingEvents and Unsubscribe reach only the
  subscriptions of the server they are routed to; the others are
  ErrorSubscriptionNotFound. With one server (the default) everything reaches it.

Settings (POST /_sim/settings), besides sim_control's:
  mailbox_servers              1        servers subscriptions are spread over (affinity)
  notification_minute_s        60       seconds a "minute" of Timeout / ConnectionTimeout
                                        and of the 30-minute idle life of a streaming
                                        subscription lasts (tests shrink it)
  streaming_heartbeat_s        30       ConnectionStatus OK after this long without output
  events_per_notification      50       events per GetEvents answer / streamed batch
  streaming_schema_namespaces  false    t: instead of m: where the schema says so
Control API (ews_sim.py lists it too):
  POST /_sim/expire {"mailbox", "what": "subscriptions"}  every live subscription of the
       mailbox expires (open streams report it at once); "sync_state": its SyncStates
       become invalid; "watermark": its watermarks become invalid. Answers the count.
  GET  /_sim/sync-stats   {"subscriptions", "pull_subscriptions", "streaming_subscriptions",
       "subscribed_mailboxes", "expired_subscriptions", "subscriptions_by_server",
       "streaming_connections" (open now), "streaming_connections_peak",
       "streaming_connections_opened", "subscriptions_on_connections",
       "max_subscriptions_per_connection", "changes" (journal length)}
  GET  /_sim/subscriptions   every subscription (live, expired or unsubscribed)
  The request log entry of a GetStreamingEvents has "stream" (the connection's number)
  and, once it is over, "stream_end" ("closed", or why it ended early).
Faults (POST /_sim/faults) apply to the new operations as to the others; on
GetStreamingEvents, drop_after_perform drops the connection after the first envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import select
import socket
import time
import traceback

from sim_control import check_number

H = None   # the ews_sim module, handed over by install()


def install(module) -> None:
    global H
    H = module


def check_positive(name: str, value):
    check_number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0")
    return value


def check_bool_setting(name: str, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


SETTINGS = {
    "mailbox_servers": (1, lambda n, v: check_number(n, v, 1, integer=True)),
    "notification_minute_s": (60, check_positive),
    "streaming_heartbeat_s": (30, check_positive),
    "events_per_notification": (50, lambda n, v: check_number(n, v, 1, integer=True)),
    "streaming_schema_namespaces": (False, check_bool_setting),
}
STREAMING_IDLE_MINUTES = 30      # a streaming subscription without a connection expires
SYNC_PREFIX = b"\x01\x00sim-sync\x00"
WATERMARK_PREFIX = b"\x02\x00sim-wm\x00"
ROOT_FOLDER = "msgfolderroot"
FOLDER_CHANGE_KEY = "AQAAAA=="
EVENT_TYPES = {"CreatedEvent", "ModifiedEvent", "DeletedEvent", "MovedEvent", "CopiedEvent",
               "NewMailEvent", "FreeBusyChangedEvent"}

ERROR_TEXTS = {
    "ErrorInvalidSyncStateData": "Synchronization state data is corrupt or otherwise invalid.",
    "ErrorInvalidWatermark": "The watermark used for subscription or GetEvents is invalid.",
    "ErrorExpiredSubscription": "The subscription has expired.",
    "ErrorSubscriptionNotFound": "The specified subscription was not found.",
    "ErrorSubscriptionUnsubscribed": "The subscription has been unsubscribed.",
    "ErrorInvalidSubscription": "The subscription is not valid for this operation.",
    "ErrorInvalidPullSubscriptionId": "The subscription is not a pull subscription.",
    "ErrorNewEventStreamConnectionOpened":
        "A new event stream connection has been opened for this subscription.",
    "ErrorInvalidSubscriptionRequest": "The subscription request is invalid.",
}


def encode_token(prefix: bytes, fields: list) -> str:
    return base64.b64encode(prefix + json.dumps(fields, separators=(",", ":")).encode()).decode()


def decode_token(prefix: bytes, text: str | None):
    """The fields of a token of ours, or None for anything else."""
    try:
        raw = base64.b64decode((text or "").strip(), validate=True)
        if not raw.startswith(prefix):
            return None
        value = json.loads(raw[len(prefix):])
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, list) else None


def utc_text(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def new_subscription_id(server: str) -> str:
    return base64.b64encode(b"\x26\x00" + server.encode() + b"\x10\x00" + os.urandom(16)).decode()


# ---------------------------------------------------------------------------
# Events from journal entries
# ---------------------------------------------------------------------------

def entry_events(entry: dict, folders, types) -> list:
    """The notification events one journal entry gives a subscription watching `folders`
    (None: every folder) for event `types`."""
    def watched(folder):
        return folders is None or folder in folders

    def event(kind, **fields):
        return dict(fields, type=kind, seq=entry["seq"], time=entry["time"])

    def folder_modified(folder):
        return event("ModifiedEvent", folder=folder, parent=ROOT_FOLDER)

    what, folder = entry["what"], entry["folder"]
    item = (entry["id"], entry["change_key"])
    found = []
    if what == "created" and watched(folder):
        found = [event("CreatedEvent", item=item, parent=folder), folder_modified(folder)]
    elif what == "modified" and watched(folder):
        found = [event("ModifiedEvent", item=item, parent=folder)]
    elif what == "deleted" and watched(folder):
        found = [event("DeletedEvent", item=item, parent=folder), folder_modified(folder)]
    elif what == "moved_to" and (watched(folder) or watched(entry["old_folder"])):
        old = entry["old_folder"]
        found = [event("MovedEvent", item=item, parent=folder, old_item=entry["old_id"],
                       old_parent=old)]
        if old != folder:
            found += [folder_modified(f) for f in (old, folder) if watched(f)]
    return [e for e in found if e["type"] in types]


def collect_events(entries: list, sub: dict, limit: int):
    """(events, seq of the last entry looked at, more left?) for a subscription: whole
    entries only, stopping once `limit` events are gathered."""
    events, last = [], None
    for index, entry in enumerate(entries):
        events += entry_events(entry, sub["folders"], sub["events"])
        last = entry["seq"]
        if len(events) >= limit:
            return events, last, index + 1 < len(entries)
    return events, last, False


def write_event(parent, mailbox: str, event: dict, watermark: str | None) -> None:
    sub, T = H.sub, H.T
    elem = sub(parent, T(event["type"]))
    if watermark is not None:
        sub(elem, T("Watermark"), watermark)
    sub(elem, T("TimeStamp"), utc_text(event["time"]))
    if "item" in event:
        item_id, change_key = event["item"]
        sub(elem, T("ItemId"), Id=item_id, ChangeKey=change_key)
    else:
        sub(elem, T("FolderId"), Id=H.folder_id(mailbox, event["folder"]),
            ChangeKey=FOLDER_CHANGE_KEY)
    sub(elem, T("ParentFolderId"), Id=H.folder_id(mailbox, event["parent"]),
        ChangeKey=FOLDER_CHANGE_KEY)
    if event["type"] == "MovedEvent":
        sub(elem, T("OldItemId"), Id=event["old_item"])
        sub(elem, T("OldParentFolderId"), Id=H.folder_id(mailbox, event["old_parent"]),
            ChangeKey=FOLDER_CHANGE_KEY)


# ---------------------------------------------------------------------------
# The store's part
# ---------------------------------------------------------------------------

class NotificationStore:
    """Mixed into ews_sim.Store: subscriptions, streams, epochs. Methods expect the
    store's lock to be held unless they take it themselves."""

    extra_settings = SETTINGS
    expirable = ("subscriptions", "sync_state", "watermark")

    def reset_notifications(self) -> None:
        self.subscriptions = {}          # id -> subscription (also expired/unsubscribed)
        self.epochs = {}                 # ("sync_state"|"watermark", mailbox|None) -> int
        self.streams = {}                # stream id -> open GetStreamingEvents
        # Not reset: a stream still closing after a reset keeps an id nobody else gets.
        self.next_stream = getattr(self, "next_stream", 1)
        self.streams_peak = 0
        self.streams_opened = 0

    def epoch(self, what: str, mailbox: str) -> list:
        return [self.epochs.get((what, None), 0), self.epochs.get((what, mailbox), 0)]

    # -- sync states and watermarks --------------------------------------------------
    def sync_state(self, mailbox: str, folder: str, position: int) -> str:
        return encode_token(SYNC_PREFIX, [self.generation, mailbox, folder,
                                          self.epoch("sync_state", mailbox), position])

    def sync_state_position(self, text: str, mailbox: str, folder: str) -> int:
        fields = decode_token(SYNC_PREFIX, text)
        if (not fields or len(fields) != 5
                or fields[:4] != [self.generation, mailbox, folder,
                                  self.epoch("sync_state", mailbox)]
                or not isinstance(fields[4], int) or not 0 <= fields[4] <= self.change_seq):
            raise H.OperationError("ErrorInvalidSyncStateData",
                                   ERROR_TEXTS["ErrorInvalidSyncStateData"])
        return fields[4]

    def watermark(self, mailbox: str, position: int) -> str:
        return encode_token(WATERMARK_PREFIX, [self.generation, mailbox,
                                               self.epoch("watermark", mailbox), position])

    def watermark_position(self, text: str, mailbox: str, oldest: int = 0) -> int:
        fields = decode_token(WATERMARK_PREFIX, text)
        if (not fields or len(fields) != 4
                or fields[:3] != [self.generation, mailbox, self.epoch("watermark", mailbox)]
                or not isinstance(fields[3], int)
                or not oldest <= fields[3] <= self.change_seq):
            raise H.OperationError("ErrorInvalidWatermark", ERROR_TEXTS["ErrorInvalidWatermark"])
        return fields[3]

    # -- affinity --------------------------------------------------------------------
    def server_names(self) -> list:
        return [f"EXSIM{n + 1:02d}.sim.local" for n in range(self.settings["mailbox_servers"])]

    def cookie_server(self, request) -> str | None:
        cookie = (request.affinity or {}).get("cookie") or ""
        server = cookie.split("~", 1)[0]
        return server if server in self.server_names() else None

    def route(self, request) -> str:
        """The mailbox server a request reaches (see "Affinity" above)."""
        names = self.server_names()
        affinity = request.affinity or {}
        server = self.cookie_server(request)
        if affinity.get("prefer") and server:
            return server
        key = affinity.get("anchor") or request.mailbox or request.fallback_mailbox
        return names[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(names)]

    # -- subscriptions ------------------------------------------------------------------
    def minute(self) -> float:
        return float(self.settings["notification_minute_s"])

    def refresh(self, sub: dict, now: float | None = None) -> dict:
        """Expires the subscription if its time is up; returns it."""
        now = time.monotonic() if now is None else now
        if sub["status"] != "active":
            return sub
        if sub["kind"] == "pull":
            due = sub["last_poll"] + sub["timeout_minutes"] * self.minute()
        elif sub["stream"] is None:
            due = sub["detached"] + STREAMING_IDLE_MINUTES * self.minute()
        else:
            return sub
        if now > due:
            sub["status"], sub["ended"] = "expired", time.time()
        return sub

    def find_subscription(self, sub_id: str, request, kind: str | None = None) -> dict:
        """A live subscription reachable by this request, else OperationError."""
        sub = self.subscriptions.get((sub_id or "").strip())
        if sub is None or sub["status"] == "unsubscribed" or sub["server"] != self.route(request):
            raise H.OperationError("ErrorSubscriptionNotFound",
                                   ERROR_TEXTS["ErrorSubscriptionNotFound"])
        if self.refresh(sub)["status"] == "expired":
            raise H.OperationError("ErrorExpiredSubscription",
                                   ERROR_TEXTS["ErrorExpiredSubscription"])
        if kind == "pull" and sub["kind"] != "pull":
            raise H.OperationError("ErrorInvalidPullSubscriptionId",
                                   ERROR_TEXTS["ErrorInvalidPullSubscriptionId"])
        if kind == "streaming" and sub["kind"] != "streaming":
            raise H.OperationError("ErrorInvalidSubscription",
                                   ERROR_TEXTS["ErrorInvalidSubscription"])
        return sub

    # -- streams -------------------------------------------------------------------------
    def open_stream(self, sub_ids: list, request, peer: str) -> dict:
        """Registers a GetStreamingEvents connection; subscriptions that cannot join are
        in its "errors" ({code: [ids]}), to be reported first."""
        stream = {"id": self.next_stream, "generation": self.generation, "subs": [],
                  "errors": {}, "peer": peer, "mailbox": request.mailbox,
                  "server": self.route(request), "opened": time.time()}
        self.next_stream += 1
        for sub_id in sub_ids:
            try:
                sub = self.find_subscription(sub_id, request, "streaming")
            except H.OperationError as exc:
                stream["errors"].setdefault(exc.code, []).append(sub_id)
                continue
            if sub["id"] in stream["subs"]:
                continue
            previous = self.streams.get(sub["stream"])
            if previous is not None:
                previous["errors"].setdefault("ErrorNewEventStreamConnectionOpened",
                                              []).append(sub["id"])
                previous["subs"].remove(sub["id"])
            sub["stream"] = stream["id"]
            stream["subs"].append(sub["id"])
        self.streams[stream["id"]] = stream
        self.streams_opened += 1
        self.streams_peak = max(self.streams_peak, len(self.streams))
        self.changed.notify_all()      # a connection that lost a subscription says so
        return stream

    def stream_batch(self, stream: dict):
        """(notifications [(sub id, mailbox, events)], errors {code: [ids]}) now due on a
        stream; advances the subscriptions' positions, so nothing is sent twice (events
        beyond events_per_notification come in the next batch)."""
        errors, stream["errors"] = stream["errors"], {}
        notes = []
        limit = self.settings["events_per_notification"]
        now = time.monotonic()
        for sub_id in list(stream["subs"]):
            sub = self.subscriptions.get(sub_id)
            code = None
            if sub is None or sub["status"] == "unsubscribed":
                code = "ErrorSubscriptionUnsubscribed"
            elif self.refresh(sub, now)["status"] == "expired":
                code = "ErrorExpiredSubscription"
            if code:
                errors.setdefault(code, []).append(sub_id)
                stream["subs"].remove(sub_id)
                if sub is not None and sub["stream"] == stream["id"]:
                    sub["stream"], sub["detached"] = None, now
                continue
            entries = self.journal(sub["mailbox"], sub["cursor"])
            if not entries:
                continue
            events, last, _ = collect_events(entries, sub, limit)
            sub["cursor"] = last
            if events:
                notes.append((sub_id, sub["mailbox"], events))
        return notes, errors

    def close_stream(self, stream: dict) -> None:
        if self.streams.get(stream["id"]) is stream:
            del self.streams[stream["id"]]
        now = time.monotonic()
        for sub_id in stream["subs"]:
            sub = self.subscriptions.get(sub_id)
            if sub is not None and sub["stream"] == stream["id"]:
                sub["stream"], sub["detached"] = None, now

    # -- control API -------------------------------------------------------------------
    def expire(self, mailbox, what: str, spec: dict) -> dict:
        with self.lock:
            if what == "subscriptions":
                count = 0
                for sub in self.subscriptions.values():
                    if sub["status"] == "active" and mailbox in (None, sub["mailbox"]):
                        sub["status"], sub["ended"] = "expired", time.time()
                        count += 1
                self.changed.notify_all()
                return {"expired": what, "mailbox": mailbox or "*", "count": count}
            key = (what, mailbox)
            self.epochs[key] = self.epochs.get(key, 0) + 1
            return {"expired": what, "mailbox": mailbox or "*"}

    def sync_stats(self) -> dict:
        with self.lock:
            now = time.monotonic()
            subs = [self.refresh(s, now) for s in self.subscriptions.values()]
            live = [s for s in subs if s["status"] == "active"]
            by_server = {}
            for sub in live:
                by_server[sub["server"]] = by_server.get(sub["server"], 0) + 1
            return {
                "changes": self.change_seq,
                "subscriptions": len(live),
                "pull_subscriptions": sum(1 for s in live if s["kind"] == "pull"),
                "streaming_subscriptions": sum(1 for s in live if s["kind"] == "streaming"),
                "subscribed_mailboxes": len({s["mailbox"] for s in live}),
                "expired_subscriptions": sum(1 for s in subs if s["status"] == "expired"),
                "subscriptions_by_server": by_server,
                "streaming_connections": len(self.streams),
                "streaming_connections_peak": self.streams_peak,
                "streaming_connections_opened": self.streams_opened,
                "subscriptions_on_connections": sum(len(s["subs"])
                                                    for s in self.streams.values()),
                "max_subscriptions_per_connection": max(
                    [len(s["subs"]) for s in self.streams.values()] or [0]),
            }

    def subscription_list(self) -> list:
        with self.lock:
            now = time.monotonic()
            return [{k: (sorted(v) if isinstance(v, set) else v) for k, v in
                     self.refresh(s, now).items() if k not in ("last_poll", "detached")}
                    for s in self.subscriptions.values()]


# ---------------------------------------------------------------------------
# The operations
# ---------------------------------------------------------------------------

class SyncOperations:
    """Mixed into ews_sim.Operations (self.store, self._resolve_folder)."""

    # -- SyncFolderItems -----------------------------------------------------------
    def op_SyncFolderItems(self, request, messages) -> None:
        M, T, sub = H.M, H.T, H.sub
        op_elem, store = request.op_elem, self.store
        shape = H.Shape.parse(op_elem.find(M("ItemShape")))
        try:
            folder_elem = H.child_elements(op_elem.find(M("SyncFolderId")))[0]
            mailbox, folder = self._resolve_folder(folder_elem, request)
            state = (op_elem.findtext(M("SyncState")) or "").strip()
            base = store.sync_state_position(state, mailbox, folder) if state else 0
        except H.OperationError as exc:
            msg = H.add_error(messages, "SyncFolderItems", exc.code, exc.text)
            sub(msg, M("SyncState"))         # real servers send it empty on errors
            sub(msg, M("IncludesLastItemInRange"), "true")
            return
        limit = int(op_elem.findtext(M("MaxChangesReturned")))
        ignore = {e.get("Id") for e in H.child_elements(op_elem.find(M("Ignore")))}
        changes, position, last = self.folder_changes(mailbox, folder, base, limit, ignore)
        msg = H.add_success(messages, "SyncFolderItems")
        sub(msg, M("SyncState"), store.sync_state(mailbox, folder, position))
        sub(msg, M("IncludesLastItemInRange"), H.xml_bool(last))
        elem = sub(msg, M("Changes"))
        for change, item_id, item in changes:
            if change == "Delete":
                sub(sub(elem, T("Delete")), T("ItemId"), Id=item_id)
            else:
                H.write_item(sub(elem, T(change)), item, shape)

    def folder_changes(self, mailbox: str, folder: str, base: int, limit: int, ignore):
        """([(Create|Update|Delete, id, item or None)], new position, last page?)."""
        store = self.store
        changes = []
        for info in store.touched_since(mailbox, base, lambda e: e["folder"] == folder):
            item = store.items.get(info["id"])
            live = item is not None and item["mailbox"] == mailbox and item["folder"] == folder
            existed = info["create"] is not None and info["create"] <= base and \
                (info["delete"] is None or info["delete"] > base)
            change = ("Update" if existed else "Create") if live else \
                ("Delete" if existed else None)
            if change is None or info["id"] in ignore:
                continue
            if len(changes) == limit:
                # Everything touched before this item's first change has been answered.
                return changes, info["first"] - 1, False
            changes.append((change, info["id"], item))
        return changes, store.change_seq, True

    # -- Subscribe / Unsubscribe --------------------------------------------------------
    def op_Subscribe(self, request, messages) -> None:
        M, T, sub = H.M, H.T, H.sub
        store = self.store
        try:
            spec = H.child_elements(request.op_elem)[0]
            kind = {"PullSubscriptionRequest": "pull",
                    "StreamingSubscriptionRequest": "streaming"}.get(H.local_name(spec))
            if kind is None:
                raise H.OperationError("ErrorInvalidSubscriptionRequest",
                                       "ews_sim implements pull and streaming subscriptions "
                                       "only.")
            folders = [self._resolve_folder(f, request)
                       for f in H.child_elements(spec.find(T("FolderIds")))]
            all_folders = H.parse_xml_bool(spec.get("SubscribeToAllFolders"))
            if not folders and not all_folders:
                raise H.OperationError("ErrorInvalidSubscriptionRequest",
                                       "FolderIds or SubscribeToAllFolders is required.")
            mailboxes = {m for m, _ in folders} or \
                {request.mailbox or request.fallback_mailbox}
            if len(mailboxes) != 1:
                raise H.OperationError("ErrorInvalidSubscriptionRequest",
                                       "All folders of a subscription must be in one mailbox.")
            mailbox = mailboxes.pop()
            cursor = store.change_seq
            resume = spec.findtext(T("Watermark"))
            if resume:
                cursor = store.watermark_position(resume, mailbox)
        except H.OperationError as exc:
            H.add_error(messages, "Subscribe", exc.code, exc.text)
            return
        server = store.route(request)
        sub_id = new_subscription_id(server)
        store.subscriptions[sub_id] = {
            "id": sub_id, "kind": kind, "mailbox": mailbox, "server": server,
            "folders": None if all_folders else {f for _, f in folders},
            "events": {e.text.strip() for e in H.child_elements(spec.find(T("EventTypes")))},
            "status": "active", "created": time.time(), "ended": None, "cursor": cursor,
            "owner": request.auth_user,
            "timeout_minutes": int(spec.findtext(T("Timeout"))) if kind == "pull" else None,
            "last_poll": time.monotonic(), "stream": None, "detached": time.monotonic(),
        }
        store.mailboxes_seen.add(mailbox)
        msg = H.add_success(messages, "Subscribe")
        sub(msg, M("SubscriptionId"), sub_id)
        if kind == "pull":
            sub(msg, M("Watermark"), store.watermark(mailbox, cursor))
        if (request.affinity or {}).get("prefer") and not store.cookie_server(request):
            secure = "; secure" if request.tls else ""
            request.response_headers.append(
                ("Set-Cookie", f"X-BackEndOverrideCookie={server}~"
                               f"{int.from_bytes(os.urandom(4), 'big')}; path=/{secure}; HttpOnly"))

    def op_Unsubscribe(self, request, messages) -> None:
        store = self.store
        sub_id = (request.op_elem.findtext(H.M("SubscriptionId")) or "").strip()
        try:
            sub = store.find_subscription(sub_id, request)
        except H.OperationError as exc:
            sub = store.subscriptions.get(sub_id)
            if exc.code != "ErrorExpiredSubscription":
                H.add_error(messages, "Unsubscribe", exc.code, exc.text)
                return
        sub["status"], sub["ended"] = "unsubscribed", time.time()
        store.changed.notify_all()
        H.add_success(messages, "Unsubscribe")

    # -- GetEvents (pull) ----------------------------------------------------------------
    def op_GetEvents(self, request, messages) -> None:
        M, T, sub = H.M, H.T, H.sub
        store = self.store
        sent = (request.op_elem.findtext(M("Watermark")) or "").strip()
        try:
            subscription = store.find_subscription(
                request.op_elem.findtext(M("SubscriptionId")), request, "pull")
            position = store.watermark_position(sent, subscription["mailbox"],
                                                subscription["cursor"])
        except H.OperationError as exc:
            H.add_error(messages, "GetEvents", exc.code, exc.text)
            return
        mailbox = subscription["mailbox"]
        subscription["cursor"] = position          # acknowledged: older ones are invalid
        subscription["last_poll"] = time.monotonic()
        events, _, more = collect_events(store.journal(mailbox, position), subscription,
                                         store.settings["events_per_notification"])
        msg = H.add_success(messages, "GetEvents")
        note = sub(msg, M("Notification"))
        sub(note, T("SubscriptionId"), subscription["id"])
        sub(note, T("PreviousWatermark"), sent)
        sub(note, T("MoreEvents"), H.xml_bool(more))
        for event in events:
            write_event(note, mailbox, event, store.watermark(mailbox, event["seq"]))
        if not events:
            status = sub(note, T("StatusEvent"))
            sub(status, T("Watermark"), store.watermark(mailbox, store.change_seq))


# ---------------------------------------------------------------------------
# GetStreamingEvents: the request handler's part
# ---------------------------------------------------------------------------

class PeerClosed(Exception):
    pass


def streaming_envelope(body_message, store) -> bytes:
    """One chunk's document: a GetStreamingEventsResponse envelope, no XML declaration."""
    envelope, messages = H.new_response("GetStreamingEvents")
    body_message(messages, store.settings["streaming_schema_namespaces"])
    return H.etree.tostring(envelope, encoding="utf-8")


def status_message(status: str):
    def build(messages, schema_ns):
        msg = H.add_success(messages, "GetStreamingEvents")
        H.sub(msg, H.M("ConnectionStatus"), status)
    return build


def notifications_message(notes: list):
    def build(messages, schema_ns):
        M, T, sub = H.M, H.T, H.sub
        msg = H.add_success(messages, "GetStreamingEvents")
        container = sub(msg, M("Notifications"))
        for sub_id, mailbox, events in notes:
            note = sub(container, (T if schema_ns else M)("Notification"))
            sub(note, T("SubscriptionId"), sub_id)
            for event in events:
                write_event(note, mailbox, event, None)
    return build


def error_message(code: str, sub_ids: list):
    def build(messages, schema_ns):
        msg = H.add_error(messages, "GetStreamingEvents", code, ERROR_TEXTS.get(code))
        ids = H.sub(msg, H.M("ErrorSubscriptionIds"))
        for sub_id in sub_ids:
            H.sub(ids, (H.T if schema_ns else H.M)("SubscriptionId"), sub_id)
    return build


class StreamingHandler:
    """Mixed into ews_sim's request handler: answers GetStreamingEvents as a stream."""

    def stream_events(self, request, record: dict, fault) -> None:
        store = self.server.store
        op_elem = request.op_elem
        sub_ids = [(e.text or "").strip()
                   for e in H.child_elements(op_elem.find(H.M("SubscriptionIds")))]
        minutes = int(op_elem.findtext(H.M("ConnectionTimeout")))
        with store.lock:
            stream = store.open_stream(sub_ids, request, "%s:%d" % self.client_address[:2])
            deadline = time.monotonic() + minutes * store.minute()
        store.update_request(record, http_status=200, stream=stream["id"])
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in list(request.response_headers) + list(
                getattr(self, "auth_reply_headers", None) or ()):
            self.send_header(name, value)
        self.auth_reply_headers = []
        self.end_headers()
        try:
            self.stream_loop(stream, deadline, fault)
            self.wfile.write(b"0\r\n\r\n")
            store.update_request(record, stream_end="closed")
        except (PeerClosed, OSError) as exc:
            self.close_connection = True
            store.update_request(record, stream_end=f"client gone: {exc!r}")
        except Exception as exc:   # a simulator bug: say so, and drop the stream
            traceback.print_exc()
            self.close_connection = True
            store.update_request(record, error=f"ews_sim internal error: {exc!r}")
        finally:
            with store.lock:
                store.close_stream(stream)

    def stream_loop(self, stream: dict, deadline: float, fault) -> None:
        store = self.server.store
        first, last_output = True, time.monotonic()
        while True:
            with store.lock:
                while True:
                    now = time.monotonic()
                    ended = stream["generation"] != store.generation
                    notes, errors = ([], {}) if ended else store.stream_batch(stream)
                    heartbeat = store.settings["streaming_heartbeat_s"]
                    if (notes or errors or first or ended or now >= deadline
                            or now - last_output >= heartbeat or not stream["subs"]):
                        break
                    store.changed.wait(max(0.01, min(deadline - now,
                                                     heartbeat - (now - last_output), 1.0)))
                    if self.peer_closed():
                        raise PeerClosed("the client closed the connection")
                closing = ended or now >= deadline or not stream["subs"]
                parts = [error_message(code, ids) for code, ids in errors.items()]
                if first and not closing:
                    parts.append(status_message("OK"))
                if notes:
                    parts.append(notifications_message(notes))
                if closing:
                    parts.append(status_message("Closed"))
                elif not parts:
                    parts.append(status_message("OK"))      # a heartbeat
                documents = [streaming_envelope(part, store) for part in parts]
            for document in documents:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(document), document))
            last_output = time.monotonic()
            if first and H.after_perform(fault):
                raise PeerClosed("fault: the connection drops after the first envelope")
            first = False
            if closing:
                return

    def peer_closed(self) -> bool:
        """True once the client has closed its end (checked while idle)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):     # TLS sockets take no recv flags: cannot tell
            return False
