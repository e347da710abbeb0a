#!/usr/bin/python3
"""Outlook -> CRM at scale (issue 17): followupd watching M mailboxes over EWS.

    /usr/bin/python3 bench/watch_bench.py [--mailboxes M] [--changes N]
                                          [--quiet-seconds S] [--latency-ms L] [...]

Reuses bench/run_bench.py's pieces (throwaway PostgreSQL from
tests/integration/pgcluster.py, the EWS simulator tests/sim/ews_sim.py with
TCP_NODELAY and no schema validation, followupd copied to a temporary directory):

  1. setup: M employees, one contact log each with a follow-up, AddToTasks = 1 and
     SyncFromOutlook = 1, inserted while followupd is stopped; then followupd starts.
     Timed from its start: every log delivered (no pending row), every mailbox
     watched (contactlog.outlook_watch has both positions) and subscribed (the
     simulator's /_sim/sync-stats: M live subscriptions on open streaming
     connections). The daemon's CPU and peak RSS over that time;
  2. a quiet window of S seconds without any change: the daemon's CPU (and
     PostgreSQL's), RSS, and every EWS request in the window (SyncFolderItems
     should be about 0: mailboxes are read on notifications only);
  3. latency: N changes made as a person in Outlook, one at a time, in N random
     mailboxes (PATCH /_sim/items/<id>: a task set to Completed, or an appointment
     moved by a day, alternately); from the PATCH (time taken just before it is sent)
     until the log has changed in the database (status 'completed', or
     next_contact_at moved), polled every 10 ms. Target (SPEC §7): <= 10 s.

Network only to 127.0.0.1; everything started is stopped, temporary directories
removed. Progress on stderr, the report on stdout. See bench/README.md.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import stat
import statistics
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run_bench import (CLK_TCK, EWS_PASSWORD, INSTALL_SQL, TOP, Db, Followupd,  # noqa: E402
                       Sim, cluster_cpu_seconds, cpu_seconds, machine, percentile, say, status_kib)
from pgcluster import PgCluster  # noqa: E402  (run_bench put its directory on sys.path)

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
LATENCY_TARGET_S = 10.0     # SPEC §7, EWS
EXPECTED_PER_CONNECTION = 200   # Microsoft's guidance, and the daemon's GROUP_SIZE


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def patch_item(sim, item_id, fields):
    """A person's edit in Outlook (the simulator's control API)."""
    req = urllib.request.Request(f"{sim.base}/_sim/items/{item_id}", method="PATCH",
                                 data=json.dumps(fields).encode(),
                                 headers={"Content-Type": "application/json"})
    with sim.opener.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def sync_stats(sim):
    return sim.call("GET", "/_sim/sync-stats")


def op_delta(before, after):
    """Requests per operation between two GET /_sim/stats (only those that changed)."""
    return {op: n - before.get(op, 0) for op, n in sorted(after.items())
            if n - before.get(op, 0)}


def user_system_seconds(pid):
    """(utime, stime) of a process, in seconds: a loop that spins on timers shows as
    system time."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def log_problems(path, limit=5):
    """(count, first few) warning or worse lines of the daemon's log (<0> .. <4>)."""
    with open(path, errors="replace") as f:
        lines = [l.rstrip() for l in f if l[:3] in ("<0>", "<1>", "<2>", "<3>", "<4>")]
    return len(lines), lines[:limit]


def fully_watched(db):
    return db.value("SELECT count(*) FROM contactlog.outlook_watch "
                    "WHERE calendar_position IS NOT NULL AND tasks_position IS NOT NULL")


def subscribed_all(stats, mailboxes):
    return (stats["subscriptions"] >= mailboxes and stats["subscribed_mailboxes"] == mailboxes
            and stats["subscriptions_on_connections"] >= mailboxes)


# ---------------------------------------------------------------------------
# The three phases
# ---------------------------------------------------------------------------

def setup_phase(args, daemon, db, sim):
    """Waits for delivery, watching and subscribing; returns the timings."""
    m = args.mailboxes
    t0 = daemon.started
    deadline = t0 + args.deadline
    delivered_at = watched_at = subscribed_at = None
    peak_rss = 0
    last_report = 0.0
    stats = {}
    while True:
        now = time.time()
        daemon.check_alive()
        peak_rss = max(peak_rss, status_kib(daemon.pid, "VmRSS") or 0)
        if delivered_at is None and db.followupd_progress()[0] == 0:
            delivered_at = now
            say(f"setup: all logs delivered after {now - t0:.1f} s")
        watched = fully_watched(db)
        if watched_at is None and watched >= m:
            watched_at = now
            say(f"setup: all {m} mailboxes watched after {now - t0:.1f} s")
        stats = sync_stats(sim)
        if subscribed_at is None and subscribed_all(stats, m):
            subscribed_at = now
            say(f"setup: all {m} mailboxes subscribed after {now - t0:.1f} s "
                f"({stats['streaming_connections']} connections)")
        if delivered_at and watched_at and subscribed_at:
            break
        if now > deadline:
            say(f"setup: deadline ({args.deadline} s) reached")
            break
        if now - last_report >= 10:
            last_report = now
            say(f"setup: {now - t0:.0f} s: pending {db.followupd_progress()[0]}, watched "
                f"{watched}, subscriptions {stats['subscriptions']} on "
                f"{stats['streaming_connections']} connections "
                f"({stats['subscriptions_on_connections']} on a connection)")
        time.sleep(0.25)
    done = max(t for t in (delivered_at, watched_at, subscribed_at, time.time()) if t)
    user, system = user_system_seconds(daemon.pid)

    def since(t):
        return round(t - t0, 2) if t else None
    return {"delivered_s": since(delivered_at), "watched_s": since(watched_at),
            "subscribed_s": since(subscribed_at),
            "all_ready_s": since(done) if delivered_at and watched_at and subscribed_at
            else None,
            "watched": fully_watched(db), "sync_stats": stats,
            "cpu_s": round(user + system, 2), "cpu_user_s": round(user, 2),
            "cpu_system_s": round(system, 2), "rss_kib_sampled_peak": peak_rss,
            "vmhwm_kib": status_kib(daemon.pid, "VmHWM"), "requests": sim.stats()}


def settle(sim, seconds=3.0, cap=60.0):
    """Waits until the simulator sees no request for `seconds` (the reads the setup
    caused, the retired connections' ends), at most `cap` seconds."""
    end = time.monotonic() + cap
    last, still_since = None, time.monotonic()
    while time.monotonic() < end:
        stats = sim.stats()
        if stats != last:
            last, still_since = stats, time.monotonic()
        elif time.monotonic() - still_since >= seconds:
            return True
        time.sleep(0.25)
    return False


def quiet_phase(args, daemon, sim, cluster):
    say(f"quiet: {args.quiet_seconds} s without changes")
    req0, conn0 = sim.stats(), sync_stats(sim)
    cpu0, pg0, sim0 = cpu_seconds(daemon.pid), cluster_cpu_seconds(cluster), \
        cpu_seconds(sim.proc.pid)
    t0 = time.monotonic()
    rss = []
    while time.monotonic() - t0 < args.quiet_seconds:
        daemon.check_alive()
        rss.append(status_kib(daemon.pid, "VmRSS"))
        time.sleep(min(1.0, max(0.0, args.quiet_seconds - (time.monotonic() - t0))))
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(daemon.pid) - cpu0
    pg = cluster_cpu_seconds(cluster) - pg0
    simcpu = cpu_seconds(sim.proc.pid) - sim0
    requests = op_delta(req0, sim.stats())
    conn1 = sync_stats(sim)
    return {"seconds": round(elapsed, 1), "cpu_s": round(cpu, 3),
            "cpu_share": round(cpu / elapsed, 4),
            "postgres_cpu_share": round(pg / elapsed, 4),
            "sim_cpu_share": round(simcpu / elapsed, 4),
            "rss_kib_min": min(rss), "rss_kib_max": max(rss),
            "vmhwm_kib": status_kib(daemon.pid, "VmHWM"),
            "requests": requests, "sync_folder_items": requests.get("SyncFolderItems", 0),
            "connections_before": conn0["streaming_connections"],
            "connections_after": conn1["streaming_connections"],
            "connections_opened": conn1["streaming_connections_opened"]
            - conn0["streaming_connections_opened"]}


def our_items(sim):
    """{contact log id: {"task": item, "appointment": item}} from every mailbox."""
    found = {}
    for items in sim.call("GET", "/_sim/mailboxes").values():
        for item in items:
            tag = item.get("extended_properties", {}).get(PROPERTY_KEY, "")
            parts = tag.split(":")
            if len(parts) == 3 and parts[0] == "contactlog":
                found.setdefault(int(parts[1]), {})[parts[2]] = item
    return found


def shift_day(stamp):
    """'2030-03-01T09:00:00Z' one day later, in the same form."""
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ") + datetime.timedelta(days=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def latency_phase(args, daemon, db, sim):
    items = our_items(sim)
    rng = random.Random(args.seed)
    with db.conn.cursor() as cur:
        cur.execute("SELECT l.id, lower(e.email) FROM contactlog.contact_log l "
                    "JOIN contactlog.employee e ON e.id = l.created_by ORDER BY l.id")
        logs = cur.fetchall()
    chosen = rng.sample(logs, min(args.changes, len(logs)))
    say(f"latency: {len(chosen)} changes in Outlook, one at a time")
    req0 = sim.stats()
    samples, misses = [], []
    for n, (log_id, mailbox) in enumerate(chosen):
        mine = items.get(log_id, {})
        if n % 2 == 0 and "task" in mine:
            what = "task completed"
            target = mine["task"]["id"]
            fields = {"status": "Completed"}
            check = ("SELECT status = 'completed' FROM contactlog.contact_log WHERE id = %s",
                     (log_id,))
        else:
            what = "appointment moved"
            appt = mine["appointment"]
            target = appt["id"]
            fields = {"start": shift_day(appt["start"]), "end": shift_day(appt["end"])}
            before = db.value("SELECT next_contact_at FROM contactlog.contact_log "
                              "WHERE id = %s", log_id)
            check = ("SELECT next_contact_at IS DISTINCT FROM %s FROM contactlog.contact_log "
                     "WHERE id = %s", (before, log_id))
        sent = time.time()
        patch_item(sim, target, fields)
        while not db.value(check[0], *check[1]):
            if time.time() - sent > args.change_timeout:
                daemon.check_alive()
                misses.append({"log": log_id, "mailbox": mailbox, "what": what})
                say(f"latency: {what} in {mailbox} (log {log_id}) not seen within "
                    f"{args.change_timeout} s")
                break
            time.sleep(0.01)
        else:
            samples.append({"s": round(time.time() - sent, 3), "what": what, "log": log_id})
        time.sleep(rng.uniform(0.1, 0.4))   # spread out; the write-back meets an idle daemon
    requests = op_delta(req0, sim.stats())
    # followupd's write-back comes back as notifications too: once it has been read,
    # each changed log must have exactly its one recorded change (no echo).
    settle(sim)
    with db.conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE applied), "
                    "count(*) FILTER (WHERE NOT applied), count(DISTINCT contact_log_id) "
                    "FROM contactlog.outlook_changes "
                    "WHERE contact_log_id = ANY(%s)", ([log_id for log_id, _ in chosen],))
        applied, refused, logs_changed = cur.fetchone()
        cur.execute("SELECT contact_log_id, kind, what, new_value, applied, reason, "
                    "to_char(at, 'HH24:MI:SS.MS') FROM contactlog.outlook_changes "
                    "WHERE contact_log_id = ANY(%s) ORDER BY contact_log_id, at, id",
                    ([log_id for log_id, _ in chosen],))
        recorded_rows = [list(row) for row in cur.fetchall()]
    values = [s["s"] for s in samples]
    result = {"changes": len(chosen), "seen": len(values), "misses": misses,
              "requests": requests, "recorded": {"applied": applied, "not_applied": refused,
                                                 "logs": logs_changed},
              "recorded_rows": recorded_rows, "samples": samples}
    if values:
        result.update(p50_s=round(statistics.median(values), 3),
                      p95_s=round(percentile(values, 95), 3), max_s=round(max(values), 3),
                      min_s=round(min(values), 3),
                      over_target=sum(1 for v in values if v > LATENCY_TARGET_S))
    return result


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def mib(kib):
    return f"{kib / 1024:.1f}" if kib is not None else "n/a"


def report(args, r):
    s, q, lat = r["setup"], r["quiet"], r["latency"]
    ss = s["sync_stats"]
    expected_conns = -(-args.mailboxes // EXPECTED_PER_CONNECTION)
    m = r["machine"]
    reqs = ", ".join(f"{k} {v}" for k, v in q["requests"].items()) or "none"
    lines = [
        f"Outlook -> CRM, EWS: {args.mailboxes} mailboxes (one log each, appointment + "
        f"task), simulator latency {args.latency_ms} ms. Machine: {m['nproc']} × "
        f"{m['cpu_model']}, load average at start {m['loadavg_at_start'][0]}.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| all {2 * args.mailboxes} items delivered, s after start | {s['delivered_s']} |",
        f"| all {args.mailboxes} mailboxes watched (both positions), s | {s['watched_s']} |",
        f"| all {args.mailboxes} mailboxes subscribed, on connections, s | {s['subscribed_s']} |",
        f"| subscriptions / subscribed mailboxes | {ss['subscriptions']} / "
        f"{ss['subscribed_mailboxes']} |",
        f"| streaming connections open (expected {expected_conns}) / peak / opened in all | "
        f"{r['final_sync_stats']['streaming_connections']} / "
        f"{r['final_sync_stats']['streaming_connections_peak']} / "
        f"{r['final_sync_stats']['streaming_connections_opened']} |",
        f"| max subscriptions per connection | "
        f"{r['final_sync_stats']['max_subscriptions_per_connection']} |",
        f"| setup: daemon CPU s, start → all ready (user + system) / peak RSS MiB | "
        f"{s['cpu_s']} ({s['cpu_user_s']} + {s['cpu_system_s']}) / {mib(s['vmhwm_kib'])} |",
        f"| setup: EWS requests | "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["requests"].items())) + " |",
        f"| quiet {q['seconds']:.0f} s: daemon CPU, % of a core | {q['cpu_share'] * 100:.2f} "
        f"({q['cpu_s']} s) |",
        f"| quiet: PostgreSQL / simulator CPU, % of a core | "
        f"{q['postgres_cpu_share'] * 100:.2f} / {q['sim_cpu_share'] * 100:.2f} |",
        f"| quiet: daemon RSS MiB (min–max) / VmHWM | {mib(q['rss_kib_min'])}–"
        f"{mib(q['rss_kib_max'])} / {mib(q['vmhwm_kib'])} |",
        f"| quiet: SyncFolderItems requests | {q['sync_folder_items']} |",
        f"| quiet: all EWS requests | {reqs} |",
    ]
    if lat.get("seen"):
        lines += [
            f"| change in Outlook → log in the database, p50 / p95 / max, s "
            f"({lat['seen']} of {lat['changes']}) | {lat['p50_s']:.3f} / {lat['p95_s']:.3f} / "
            f"{lat['max_s']:.3f} |",
            f"| changes slower than {LATENCY_TARGET_S:.0f} s / not seen within "
            f"{args.change_timeout:.0f} s | {lat['over_target']} / {len(lat['misses'])} |",
            "| EWS requests during the changes | "
            + ", ".join(f"{k} {v}" for k, v in lat["requests"].items()) + " |",
            f"| changes recorded for those logs: applied / not applied | "
            f"{lat['recorded']['applied']} / {lat['recorded']['not_applied']} |",
        ]
    else:
        lines.append(f"| changes seen | 0 of {lat['changes']} |")
    n_problems, first = r["daemon_log_problems"]
    lines.append(f"| daemon log: warnings or worse | {n_problems} |")
    checks = [
        ("all watched and subscribed", s["all_ready_s"] is not None),
        (f"{expected_conns} connections, ≤ {EXPECTED_PER_CONNECTION} subscriptions each",
         r["final_sync_stats"]["streaming_connections"] == expected_conns
         and r["final_sync_stats"]["max_subscriptions_per_connection"]
         <= EXPECTED_PER_CONNECTION),
        ("no SyncFolderItems while quiet", q["sync_folder_items"] == 0),
        (f"latency max ≤ {LATENCY_TARGET_S:.0f} s, every change seen",
         bool(lat.get("seen")) and not lat["misses"] and lat["max_s"] <= LATENCY_TARGET_S),
        ("one change recorded per change (no echo)",
         bool(lat.get("seen")) and lat["recorded"] == {"applied": lat["changes"],
                                                       "not_applied": 0,
                                                       "logs": lat["changes"]}),
    ]
    lines += ["", "| check | result |", "|---|:---:|"]
    lines += [f"| {name} | {'PASS' if ok else 'MISS'} |" for name, ok in checks]
    if first:
        lines += ["", "First warnings of the daemon:"] + [f"    {l}" for l in first]
    return "\n".join(lines), all(ok for _, ok in checks)


# ---------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/watch_bench.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--mailboxes", type=int, default=2000, help="employees/mailboxes (2000)")
    p.add_argument("--changes", type=int, default=50, help="changes made in Outlook (50)")
    p.add_argument("--quiet-seconds", type=float, default=60,
                   help="the window without changes (60)")
    p.add_argument("--latency-ms", type=int, default=20, help="simulator latency (20)")
    p.add_argument("--deadline", type=float, default=480,
                   help="give up waiting for the setup after this many seconds (480)")
    p.add_argument("--change-timeout", type=float, default=30,
                   help="seconds to wait for one change to reach the database (30)")
    p.add_argument("--seed", type=int, default=17, help="which mailboxes change (17)")
    p.add_argument("--binary", default=os.path.join(TOP, "build", "followupd"),
                   help="followupd to measure (copied to a temporary directory first)")
    p.add_argument("--json", help="also write every figure and sample to this file")
    p.add_argument("--keep-logs", metavar="DIR",
                   help="copy the daemon's and the simulator's logs to DIR at the end")
    args = p.parse_args(argv)
    if args.mailboxes < 1 or args.changes < 1 or args.quiet_seconds <= 0:
        p.error("--mailboxes and --changes must be at least 1, --quiet-seconds above 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    results = {"started": datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec="seconds"), "machine": machine(),
               "parameters": {k: v for k, v in vars(args).items()
                              if k not in ("json", "keep_logs")}}
    work = tempfile.mkdtemp(prefix="followupd-watch-bench-")
    cluster = sim = db = daemon = None
    try:
        binary = os.path.join(work, "followupd")
        shutil.copy2(args.binary, binary)   # others may rebuild it while we run
        password_file = os.path.join(work, "ews-password")
        with open(password_file, "w") as f:
            f.write(EWS_PASSWORD + "\n")
        os.chmod(password_file, stat.S_IRUSR | stat.S_IWUSR)
        if os.geteuid() == 0:
            os.chmod(work, 0o755)   # PostgreSQL runs as 'postgres'

        say("starting PostgreSQL and the EWS simulator")
        cluster = PgCluster().start()
        cluster.psql("-f", INSTALL_SQL)
        sim = Sim(work, args.latency_ms, nodelay=True)
        db = Db(cluster)
        db.employees(args.mailboxes)
        for name in ("AddToTasks", "SyncFromOutlook"):
            db.run("INSERT INTO contactlog.attribute (name, value) VALUES (%s, '1') "
                   "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name)
        db.insert_logs(args.mailboxes)   # round robin: one log per employee
        say(f"setup: {args.mailboxes} logs inserted; starting followupd")
        daemon = Followupd(work, binary, cluster, sim, 8, password_file, "watch")

        results["setup"] = setup_phase(args, daemon, db, sim)
        appointments = sim.appointments()
        results["setup"]["appointments_in_sim"] = sum(appointments.values())
        if results["setup"]["all_ready_s"] is not None:
            if not settle(sim):
                say("quiet: the simulator still saw requests after 60 s; measuring anyway")
            results["quiet"] = quiet_phase(args, daemon, sim, cluster)
            results["latency"] = latency_phase(args, daemon, db, sim)
        else:
            results["quiet"] = {"seconds": 0, "cpu_s": 0, "cpu_share": 0,
                                "postgres_cpu_share": 0, "sim_cpu_share": 0,
                                "rss_kib_min": None, "rss_kib_max": None, "vmhwm_kib": None,
                                "requests": {}, "sync_folder_items": -1}
            results["latency"] = {"changes": 0, "seen": 0, "misses": [], "requests": {}}
        results["final_sync_stats"] = sync_stats(sim)
        results["daemon_log_problems"] = log_problems(daemon.log_path)
        results["duration_s"] = round(time.time() - started, 1)
        text, ok = report(args, results)
        print(text)
        print(f"\nwhole run {results['duration_s']} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
                f.write("\n")
        return 0 if ok else 1
    finally:
        if daemon:
            code = daemon.stop()
            if code not in (0, None):
                say(f"followupd exited with status {code}:\n{daemon.tail()}")
        if db:
            db.close()
        if sim:
            sim.stop()
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for path in (daemon.log_path if daemon else None, sim.log_path if sim else None):
                if path:
                    shutil.copy2(path, args.keep_logs)
        if cluster:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
