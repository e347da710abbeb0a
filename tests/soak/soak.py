#!/usr/bin/python3
"""The chaos soak (issues 11 and 16): random edits, completions, deletes and changes
of ownership (take, assign, surrender) on a few hundred contact logs over many
mailboxes, with FollowUpMailbox switched between creator and owner at random
moments, while everything that can go wrong does, at random:
kill -9 of a daemon, pg_terminate_backend of its sessions, a PostgreSQL restart,
Exchange answering late, never, or after the client's timeout, slow lookups, and two
daemons on one database. At the end, with the faults gone, every log is checked
against the mailboxes themselves (not the database's bookkeeping): exactly the items
SPEC §3 says, each once, in the log's home mailbox (the owner's or the creator's, as
FollowUpMailbox says at the end), with the newest content, and no tagged item without
a log that wants it.

With SyncFromOutlook = 1 (issue 17; off with --no-outlook-edits) people move, tick off
and delete items in Outlook too. At the end, once every watched mailbox was read past
its last change, SPEC §7 holds on top: an item is missing only when its deletion in
Outlook was applied, each change read back is recorded once, a refusal says why, and the
mailboxes agree with the logs (applied: in the log; refused: Outlook put back).

    top_srcdir=. top_builddir=build /usr/bin/python3 tests/soak/soak.py \\
        [--seconds 120] [--backend ews|graph] [--seed N] [--logs 200] [--mailboxes 12] \\
        [--no-outlook-edits]

Prints the seed first; `--seed N` replays the same random choices (timing still
varies). Exit status 0 when the invariant holds, 1 with the offending logs listed.
"""
import argparse
import datetime
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from conftest import (Daemon, Database, GraphSimulator, INSTALL_SQL, Simulator,  # noqa: E402
                      daemon_conninfo)
from pgcluster import PgCluster, wait_for  # noqa: E402

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
# timeout 2 s; settle 3 s covers the late creates below (performed 2.5 s late).
CONFIG = ("[delivery]\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\nmax_attempts = 1000\n"
          "settle_ms = 3000\nlease_seconds = 4\nconcurrency = 4\nbatch_size = 5\n")
LATE_MS = 2500
# The least poll interval the daemon takes: Graph reads each watched mailbox this often.
GRAPH_POLL = "\n[graph]\npoll_interval = 5\n"
# The simulators' request log: what reads a mailbox back, what writes to it.
READS = ("SyncFolderItems", "EventsDelta", "TasksDelta")
WRITES = ("CreateItem", "UpdateItem", "DeleteItem", "CreateEvent", "PatchEvent", "DeleteEvent",
          "CreateTask", "PatchTask", "DeleteTask")
# How long the end waits for every watched mailbox to be read past its last change.
READ_BACK_TIMEOUT = 180


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = tempfile.mkdtemp(prefix="followupd-soak-")
        self.pg = PgCluster().start()
        self.pg.psql("-f", INSTALL_SQL)
        daemon_conninfo(self.pg)
        sim_dir = os.path.join(self.workdir, "sim")
        os.mkdir(sim_dir)
        self.sim = (GraphSimulator if args.backend == "graph" else Simulator)(sim_dir)
        self.db = Database(self.pg)
        self.db.set_attribute("AddToTasks", "1")
        if args.outlook_edits:
            self.db.query("INSERT INTO contactlog.attribute (name, value) VALUES "
                          "('SyncFromOutlook', '1') ON CONFLICT (name) DO UPDATE "
                          "SET value = EXCLUDED.value")
        self.daemons = []
        self.stats = {}
        self.outlook_edited_at = {}   # mailbox -> last edit there (the end reads past it)
        self.history = []             # (time, log id or None, what the soak did)

    def count(self, what):
        self.stats[what] = self.stats.get(what, 0) + 1

    def trace(self, log_id, what):   # for the report of a failure
        self.history.append((time.time(), log_id, what))

    # -- daemons -----------------------------------------------------------------
    def start_daemon(self):
        n = len(self.daemons)
        workdir = os.path.join(self.workdir, f"daemon{n}")
        os.mkdir(workdir)
        config = CONFIG
        if self.args.outlook_edits and self.args.backend == "graph":
            config += GRAPH_POLL
        d = Daemon(workdir, self.pg, self.sim, config)
        self._set_timeout(d)
        d.start()
        self.daemons.append(d)
        return d

    @staticmethod
    def _set_timeout(d):
        with open(d.config_path) as f:
            text = f.read()
        with open(d.config_path, "w") as f:
            f.write(text.replace("timeout = 5\n", "timeout = 2\n"))

    def alive(self):
        return [d for d in self.daemons if d.proc and d.proc.poll() is None]

    def kill_one(self):
        alive = self.alive()
        if not alive:
            return
        d = self.rng.choice(alive)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.log.close()
        self.count("kill -9")
        d.start(wait_ready=True)

    def terminate_sessions(self):
        self.db.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'followupd'")
        self.count("pg_terminate_backend")

    def restart_postgres(self):
        self.db.close()
        self.pg.pg_ctl("restart")
        self.db = Database(self.pg)
        self.count("PostgreSQL restart")

    def second_daemon(self):
        if len(self.alive()) < 2:
            self.start_daemon()
            self.count("second daemon")

    # -- Exchange misbehaving ----------------------------------------------------
    def fault(self):
        creates = self.sim.ops("CreateItem")
        writes = self.sim.ops("CreateItem", "UpdateItem", "DeleteItem")
        choice = self.rng.randrange(5)
        if choice == 0:
            self.sim.fault(mode="delay", when="before_perform", ms=LATE_MS, answer="drop",
                           count=self.rng.randint(1, 3), ops=creates)
            self.count("performed after the timeout, never answered")
        elif choice == 1:
            self.sim.fault(mode="drop_after_perform", count=self.rng.randint(1, 3), ops=writes)
            self.count("answer lost")
        elif choice == 2:
            self.sim.fault(mode="delay", ms=self.rng.randint(300, 1500),
                           count=self.rng.randint(1, 5), ops=self.sim.ops("FindItem"))
            self.count("slow lookup")
        elif choice == 3:
            self.sim.fault(mode="delay", when="before_perform", ms=self.rng.randint(200, 1500),
                           count=self.rng.randint(1, 4), ops=writes)
            self.count("performed late, answered")
        else:
            self.sim.fault(mode="http_status", status=503, retry_after=1, count=1)
            self.count("HTTP 503")

    # -- the CRM -----------------------------------------------------------------
    def edit(self):
        log_id = self.rng.choice(self.ids)
        op = self.rng.random()
        when = (f"2031-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d} "
                f"{self.rng.randint(6, 18):02d}:00:00+00")
        status = self.db.value("SELECT status FROM contactlog.contact_log WHERE id = %s", log_id)
        if status is None:   # deleted: make a new one in its place
            self.ids[self.ids.index(log_id)] = self.new_log()
            return
        if status == "completed":
            return
        if op < 0.12:
            self.change_owner(log_id)
            return
        if op < 0.35:
            self.db.query("UPDATE contactlog.contact_log SET next_contact_at = %s WHERE id = %s",
                          when, log_id)
            done = f"next_contact_at = {when}"
        elif op < 0.65:
            done = f"reason = edit {self.rng.randrange(10**6)}"
            self.db.query("UPDATE contactlog.contact_log SET reason = %s WHERE id = %s",
                          done[len("reason = "):], log_id)
        elif op < 0.75:
            self.db.query("UPDATE contactlog.contact_log SET next_contact_at = NULL WHERE id = %s",
                          log_id)
            done = "next_contact_at = NULL"
        elif op < 0.85:
            reason = f"back {self.rng.randrange(10**6)}"
            self.db.query("UPDATE contactlog.contact_log SET next_contact_at = %s, reason = %s "
                          "WHERE id = %s", when, reason, log_id)
            done = f"next_contact_at = {when}, reason = {reason}"
        elif op < 0.93:
            self.db.query("UPDATE contactlog.contact_log SET status = 'completed', owner_id = NULL "
                          "WHERE id = %s", log_id)
            done = "completed"
        else:
            self.db.query("DELETE FROM contactlog.contact_log WHERE id = %s", log_id)
            done = "deleted"
        self.trace(log_id, f"CRM: {done}")
        self.count("edit")

    def change_owner(self, log_id):
        """take, assign or surrender by someone allowed to (a refusal changes nothing)."""
        owner = self.db.value("SELECT owner_id FROM contactlog.contact_log WHERE id = %s", log_id)
        actor = owner if owner is not None else self.rng.choice(self.people)
        other = self.rng.choice(self.people)
        op = self.rng.choice(["take", "assign", "surrender"])
        try:
            if op == "assign":
                self.db.query("SELECT contactlog.assign(%s, %s, %s)", log_id, actor, other)
            else:
                self.db.query(f"SELECT contactlog.{op}(%s, %s)", log_id,
                              other if op == "take" else actor)
            self.count(op)
            self.trace(log_id, f"CRM: {op} by {actor}, other {other}")
        except Exception as exc:
            if getattr(exc, "pgcode", None) != "42501":
                raise
            self.count("ownership change refused")

    def switch_follow_up_mailbox(self):
        value = self.rng.choice(["creator", "owner"])
        self.db.query("INSERT INTO contactlog.attribute (name, value) VALUES "
                      "('FollowUpMailbox', %s) ON CONFLICT (name) DO UPDATE "
                      "SET value = EXCLUDED.value", value)
        self.count(f"FollowUpMailbox = {value}")
        self.trace(None, f"CRM: FollowUpMailbox = {value}")

    # -- a person in Outlook (SPEC §7) ---------------------------------------------
    def outlook_edit(self):
        """Someone acts on a random item of ours in their Outlook, as people do:
        moves an appointment, changes a task's due date, ticks a task off, deletes."""
        tagged = [(mailbox, item) for mailbox, items in self.sim.mailboxes().items()
                  for item in items
                  if item["extended_properties"].get(PROPERTY_KEY, "").startswith("contactlog:")]
        if not tagged:
            return
        mailbox, item = self.rng.choice(tagged)
        tag = item["extended_properties"][PROPERTY_KEY]
        kind = tag.rsplit(":", 1)[1]
        day = datetime.datetime(2031, self.rng.randint(1, 12), self.rng.randint(1, 28),
                                tzinfo=datetime.timezone.utc)
        start = day + datetime.timedelta(hours=self.rng.randint(6, 18),
                                         minutes=self.rng.choice([0, 15, 30, 45]))
        op = self.rng.random()
        if op < 0.2:
            what, method, fields = "item deleted", "DELETE", None
        elif kind == "appointment":
            end = start + datetime.timedelta(minutes=30)
            what, method = "appointment moved", "PATCH"
            fields = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "end": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
        elif op < 0.6:
            what, method = "task due date changed", "PATCH"
            fields = {"due_date": day.strftime("%Y-%m-%dT00:00:00Z")}
        else:
            what, method, fields = "task completed", "PATCH", {"status": "Completed"}
        path = "/_sim/items/" + urllib.parse.quote(item["id"], safe="")
        try:
            answer = self.sim.call(method, path, fields)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            self.count("Outlook: item gone before the edit (404)")
            return
        finally:   # the end waits for a read of the mailbox after this
            self.outlook_edited_at[mailbox] = time.time()
        self.trace(int(tag.split(":")[1]),
                   f"Outlook: {what.replace('item', kind)} in {mailbox} {fields or ''} "
                   f"(item ...{item['id'][-12:]}, "
                   f"change key now {(answer or {}).get('change_key')})")
        self.count(f"Outlook: {what}")

    def new_log(self):
        owner = self.rng.choice(self.people)
        return self.db.log(owner, reason=f"new {self.rng.randrange(10**6)}",
                           next_contact_at=f"2031-06-{self.rng.randint(1, 28):02d} 09:00:00+00")

    # -- the run -----------------------------------------------------------------
    def run(self):
        args = self.args
        self.people = [self.db.employee(f"m{n}", f"Member {n}", f"m{n}@example.org")
                       for n in range(args.mailboxes)]
        self.ids = [self.new_log() for _ in range(args.logs)]
        self.start_daemon()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            r = self.rng.random()
            try:
                if r < 0.76 or (r < 0.80 and not args.outlook_edits):
                    for _ in range(self.rng.randint(1, 8)):
                        self.edit()
                elif r < 0.80:
                    for _ in range(self.rng.randint(1, 3)):
                        self.outlook_edit()
                elif r < 0.81:
                    self.switch_follow_up_mailbox()
                elif r < 0.88:
                    self.fault()
                elif r < 0.92:
                    self.kill_one()
                elif r < 0.95:
                    self.terminate_sessions()
                elif r < 0.96:
                    self.restart_postgres()
                elif r < 0.98:
                    self.second_daemon()
                else:
                    alive = self.alive()
                    if len(alive) > 1:
                        d = alive[-1]
                        d.stop()
                        self.count("second daemon stopped")
            except Exception as exc:   # the database restarting under our feet
                self.count(f"test-side error {type(exc).__name__}")
                self.reconnect()
            time.sleep(self.rng.uniform(0.01, 0.15))   # pacing of the chaos, not a wait
        return self.settle_and_check()

    def reconnect(self):
        try:
            self.db.close()
        except Exception:
            pass
        self.db = wait_for(self._connect, timeout=60, what="the database")

    def _connect(self):
        try:
            return Database(self.pg)
        except Exception:
            return None

    def settle_and_check(self):
        self.sim.call("DELETE", "/_sim/faults")
        if not self.alive():
            self.start_daemon()
        for d in self.daemons:
            if d.proc and d.proc.poll() is not None and d.proc.returncode not in (0, -9):
                print(f"a daemon exited with {d.proc.returncode}:\n{d.output()[-3000:]}")
                return 1
        self.wait_drained()
        problems = self.wait_read_back() if self.args.outlook_edits else []
        parked = self.db.query("SELECT contact_log_id, last_error FROM "
                               "contactlog.followupd_log_state WHERE failed")
        problems += [f"log {i} parked: {e}" for i, e in parked]
        problems += self.check_mailboxes()
        if self.args.outlook_edits:
            problems += self.check_outlook_changes()
            for what, applied, n in self.db.query(
                    "SELECT what, applied, count(*) FROM contactlog.outlook_change_log "
                    "GROUP BY 1, 2"):
                self.stats[f"read back: {what} {'applied' if applied else 'refused'}"] = n
        print("soak:", ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items())))
        if problems:
            print(f"soak: {len(problems)} problems (seed {self.args.seed}):")
            for p in problems[:50]:
                print("  " + p)
            self.print_history(problems)
            return 1
        print(f"soak: invariant holds for {len(self.ids)} logs (seed {self.args.seed})")
        return 0

    def drained(self):
        return self.db.value("SELECT count(*) FROM contactlog.followupd_log_state "
                             "WHERE dirty AND NOT failed") == 0

    def wait_drained(self):
        try:
            wait_for(self.drained, timeout=180, what="the queue to drain")
        except TimeoutError:
            for row in self.db.query(
                    "SELECT q.claimed_by, count(*), max(q.attempts), min(q.last_error) "
                    "FROM contactlog.outlook_queue q JOIN contactlog.followupd_log_state s "
                    "USING (contact_log_id) WHERE s.dirty AND NOT s.failed GROUP BY 1"):
                print(f"soak: still dirty: claimed by {row[0]}: {row[1]} logs, attempts up to "
                      f"{row[2]}, e.g. {row[3]}")
            raise

    # -- the end: Outlook -> CRM ---------------------------------------------------
    def wait_read_back(self):
        """Waits, the queue drained, until the daemon has read every watched mailbox
        after the last change to it (a write of the daemon's, a person's edit) and
        stored what it read: a change still on its way is no failure of the invariant.
        Refusals put Outlook back and applied changes update the other item, which
        are writes again: so until nothing new happens."""
        time.sleep(LATE_MS / 1000)   # a write the last fault made late lands first
        started = time.monotonic()
        deadline = started + READ_BACK_TIMEOUT
        unread = []
        while time.monotonic() < deadline:
            self.wait_drained()
            unread, writes = self.mailboxes_not_read_back()
            if not unread:
                time.sleep(1)
                unread, writes_now = self.mailboxes_not_read_back()
                if not unread and writes_now == writes and self.drained():
                    self.stats["read back: seconds waited at the end"] = round(
                        time.monotonic() - started)
                    return []
            time.sleep(0.5)
        return [f"mailbox {m}: not read back after its last change in {READ_BACK_TIMEOUT} s "
                f"({why})" for m, why in unread]

    def mailboxes_not_read_back(self):
        """[(mailbox, why)] of the watched mailboxes whose calendar and then tasks were
        not read after the last write to them and the last edit in them, or whose last
        read is not stored yet; and the number of writes so far."""
        requests = self.sim.requests()
        folder = {}   # request seq -> "calendar" / "tasks"
        if self.args.backend == "ews":
            for r in self.sim.call("GET", "/_sim/requests?op=SyncFolderItems&body=1"):
                folder[r["seq"]] = "tasks" if 'Id="tasks"' in (r.get("body") or "") \
                    else "calendar"
        last_write, reads, writes = {}, {}, 0
        for r in requests:
            mailbox = r.get("mailbox")
            if r["op"] in WRITES:
                writes += 1
                if mailbox:
                    last_write[mailbox] = r["seq"]
            elif r["op"] in READS and mailbox:
                where = folder.get(r["seq"], "tasks" if r["op"] == "TasksDelta" else "calendar")
                reads.setdefault(mailbox, []).append((r["seq"], r["time"], where))
        unread = []
        for mailbox, stored_at in self.db.query(
                "SELECT mailbox, extract(epoch FROM last_sync_at)::float8 "
                "FROM contactlog.followupd_watched_mailboxes()"):
            after_write = last_write.get(mailbox, -1)
            after_edit = self.outlook_edited_at.get(mailbox, 0)
            seen = reads.get(mailbox, [])
            calendar = next((seq for seq, at, where in seen if where == "calendar"
                             and seq > after_write and at > after_edit), None)
            if calendar is None:
                unread.append((mailbox, "no read of the calendar since"))
            elif not any(seq > calendar and where == "tasks" for seq, _, where in seen):
                unread.append((mailbox, "no read of the tasks since"))
            elif stored_at is None or stored_at < seen[-1][1]:
                unread.append((mailbox, "the last read not stored"))
        return unread, writes

    def check_outlook_changes(self):
        """SPEC §7 in contactlog.outlook_change_log: each change read back is recorded
        once (a page read twice, by two daemons or after a crash, applies once), and a
        refused one says why."""
        problems = []
        for item_id, key, what, n, logs in self.db.query(
                "SELECT item_id, change_key, what, count(*), array_agg(DISTINCT contact_log_id) "
                "FROM contactlog.outlook_change_log GROUP BY 1, 2, 3 HAVING count(*) > 1"):
            problems.append(f"log {logs[0]}: {what} of item {item_id} (change key {key!r}) "
                            f"recorded {n} times")
        for log_id, what in self.db.query(
                "SELECT contact_log_id, what FROM contactlog.outlook_changes "
                "WHERE NOT applied AND coalesce(btrim(reason), '') = ''"):
            problems.append(f"log {log_id}: {what} in Outlook refused without a reason")
        return problems

    def print_history(self, problems, most=8):
        """For the first logs named in the problems, in order of time: what the soak
        did (to it, or to all), the changes read back; then its rows now."""
        named = list(dict.fromkeys(int(p.split()[1].rstrip(":")) for p in problems
                                   if p.startswith("log ") and p.split()[1][0].isdigit()))
        start = self.history[0][0] if self.history else 0
        for log_id in named[:most]:
            print(f"soak: history of log {log_id} (seconds since the first action):")
            events = [(at, what) for at, which, what in self.history if which in (log_id, None)]
            events += [(at, f"read back: {kind} {what} in {box} {old} -> {new}, "
                            f"{'applied' if applied else 'refused: ' + reason}")
                       for at, kind, what, box, old, new, applied, reason in self.db.query(
                           "SELECT extract(epoch FROM at)::float8, kind, what, mailbox, "
                           "old_value, new_value, applied, reason FROM "
                           "contactlog.outlook_changes WHERE contact_log_id = %s", log_id)]
            for at, what in sorted(events):
                print(f"    {at - start:8.3f} {what}")
            for row in self.db.query(
                    "SELECT kind, mailbox, item_id, change_key, deleted_in_outlook "
                    "FROM contactlog.outlook_item WHERE contact_log_id = %s", log_id):
                print(f"    item row (kind, mailbox, id, change key, deleted): {row}")
            print("    log (status, owner, creator, next_contact_at, reason):", self.db.query(
                "SELECT status, owner_id, created_by, next_contact_at, reason "
                "FROM contactlog.contact_log WHERE id = %s", log_id))

    def check_mailboxes(self):
        """Every item, in every mailbox, against what the logs want now. An item its
        user deleted in Outlook (the deletion applied: deleted_in_outlook) stays
        deleted (SPEC §7): the only item a log may lack."""
        now = datetime.datetime.now(datetime.timezone.utc)
        found = {}
        for mailbox, items in self.sim.mailboxes().items():
            for item in items:
                tag = item["extended_properties"].get(PROPERTY_KEY)
                if tag:
                    found.setdefault(tag, []).append((mailbox, item))
        problems = []
        # The home (docs/architecture.md "Moves between mailboxes"): the owner's mailbox
        # when the items follow the owner (and an active owner with one exists), else
        # the creator's. Completed logs' items stay where they were: not checked.
        logs = {row[0]: row[1:] for row in self.db.query(
            "SELECT l.id, l.status, l.next_contact_at, l.reason, "
            "       CASE WHEN a.effective_value = 'owner' AND o.active AND o.email IS NOT NULL "
            "            THEN o.email ELSE c.email END "
            "FROM contactlog.contact_log l "
            "JOIN contactlog.employee c ON c.id = l.created_by "
            "LEFT JOIN contactlog.employee o ON o.id = l.owner_id "
            "CROSS JOIN contactlog.effective_attribute a WHERE a.name = 'FollowUpMailbox'")}
        deleted_in_outlook = set(self.db.query(
            "SELECT contact_log_id, kind FROM contactlog.outlook_item WHERE deleted_in_outlook"))
        if self.args.outlook_edits:
            self.stats["read back: items staying deleted"] = len(deleted_in_outlook)
        for tag, items in found.items():
            _, log_id, kind = tag.split(":")
            if len(items) > 1:
                problems.append(f"{tag}: {len(items)} items (duplicates)")
            if int(log_id) not in logs:
                problems.append(f"{tag}: an item for a deleted log")
        for log_id, (status, next_contact, reason, email) in logs.items():
            for kind in ("appointment", "task"):
                items = found.get(f"contactlog:{log_id}:{kind}", [])
                if (log_id, kind) in deleted_in_outlook:
                    if items:
                        problems.append(f"log {log_id}: {kind} deleted in Outlook (as recorded) "
                                        f"is back in {items[0][0]}")
                    continue
                if next_contact is None:
                    if items:
                        problems.append(f"log {log_id}: {kind} without a follow-up")
                    continue
                start = next_contact.astimezone(datetime.timezone.utc)
                subject = reason.split("\n")[0] if reason and reason.strip() else None
                if status == "completed":
                    if kind == "appointment" and items and start > now:
                        problems.append(f"log {log_id}: future appointment of a completed log")
                    if kind == "task" and items and items[0][1]["status"] != "Completed":
                        problems.append(f"log {log_id}: task of a completed log not completed")
                    continue
                if len(items) != 1:
                    problems.append(f"log {log_id}: {len(items)} {kind}s, want 1")
                    continue
                mailbox, item = items[0]
                if mailbox != email:
                    problems.append(f"log {log_id}: {kind} in {mailbox}, want {email}")
                if subject and item["subject"] != subject:
                    problems.append(f"log {log_id}: {kind} says {item['subject']!r}, "
                                    f"the log {subject!r} (an older version)")
                if kind == "appointment" and item["start"] != start.strftime("%Y-%m-%dT%H:%M:%SZ"):
                    problems.append(f"log {log_id}: appointment at {item['start']}, the log at "
                                    f"{start.isoformat()}")
                # The employees have no time zone: due on the UTC date (SPEC §3).
                if kind == "task" and (item.get("due_date") or "")[:10] != start.date().isoformat():
                    problems.append(f"log {log_id}: task due {item.get('due_date')}, the log at "
                                    f"{start.isoformat()}")
                if kind == "task" and item["status"] == "Completed":
                    problems.append(f"log {log_id}: task completed, the log {status}")
        return problems

    def close(self):
        for d in self.daemons:
            try:
                d.stop(timeout=30)
            except Exception:
                if d.proc and d.proc.poll() is None:
                    d.proc.kill()
            d.notify.close()
        self.sim.stop()
        try:
            self.db.close()
        except Exception:
            pass
        self.pg.stop()
        if os.environ.get("SOAK_KEEP"):
            print(f"soak: files kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 120)))
    p.add_argument("--backend", choices=["ews", "graph"], default="ews")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--logs", type=int, default=200)
    p.add_argument("--mailboxes", type=int, default=12)
    p.add_argument("--no-outlook-edits", dest="outlook_edits", action="store_false",
                   help="SyncFromOutlook stays 0 and nobody edits in Outlook")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    print(f"soak: seed {args.seed}, {args.seconds:.0f} s, {args.backend}, {args.logs} logs, "
          f"{args.mailboxes} mailboxes, Outlook edits {'on' if args.outlook_edits else 'off'}",
          flush=True)
    soak = Soak(args)
    try:
        rc = soak.run()
    except BaseException:
        for d in soak.daemons:
            sys.stderr.write(d.output()[-4000:])
        raise
    finally:
        soak.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
