"""Delivery benchmark (issue 6): followupd against a plain exchangelib script.

    bench/run [--items N] [--mailboxes M] [--latency-ms L] [--concurrency C]
              [--backlog B] [--skip-baseline] [...]

Starts a throwaway PostgreSQL cluster (tests/integration/pgcluster.py), installs
sql/install.sql, starts the EWS simulator (tests/sim/ews_sim.py --latency-ms L
--no-schema) and M employees with mailboxes, then measures

  1. throughput: N logs inserted in one transaction while followupd is stopped, then
     followupd started; wall time from its start until contactlog.followupd_log_state has no
     dirty row (polled every 50 ms); the simulator must hold exactly N appointments;
  2. latency: 50 single saves with the daemon idle; commit (time.time() after COMMIT)
     to the simulator's receipt of the CreateItem carrying that log (its request log's
     "time", same clock);
  3. CPU: utime+stime of the followupd process during step 1, per 1,000 items;
  4. memory: VmHWM of a fresh followupd process working through a backlog of B logs
     (until done or --backlog-cap seconds);
  5. the same for bench/baseline_exchangelib.py (unless --skip-baseline), and the
     issue's targets with PASS/MISS.

Only /usr/bin/python3 with Debian packages (python3-psycopg2, python3-lxml,
python3-exchangelib); network only to 127.0.0.1. Everything started is stopped and
every temporary directory removed. See bench/README.md.
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
from pgcluster import PgCluster, wait_for  # noqa: E402

PYTHON = "/usr/bin/python3"
INSTALL_SQL = os.path.join(TOP, "sql", "install.sql")
SIM = os.path.join(TOP, "tests", "sim", "ews_sim.py")
BASELINE = os.path.join(HERE, "baseline_exchangelib.py")
EWS_USER, EWS_PASSWORD = "svc-bench", "bench-Passw0rd!"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# The simulator's HTTP handler writes the status line + headers and then the body in
# two send()s on a socket without TCP_NODELAY. When the client's delayed ACK meets
# Nagle's algorithm the body waits ~40 ms for the ACK of the headers on every
# keep-alive request: an artefact of the simulator, not of Exchange (IIS/http.sys
# sends one buffer). By default the benchmark starts the unchanged simulator module
# with TCP_NODELAY on its accepted sockets (StreamRequestHandler's own switch);
# --sim-nagle keeps the simulator's default.
SIM_NODELAY_LAUNCHER = (
    "import sys; sys.path.insert(0, sys.argv[1]); import ews_sim; "
    "ews_sim.EwsRequestHandler.disable_nagle_algorithm = True; "
    "sys.exit(ews_sim.main(sys.argv[2:]))")

TARGETS = {
    "throughput_vs_baseline": 20.0,     # followupd items/s >= 20x the baseline's
    "throughput_vs_bound": 0.90,        # >= 90 % of C/L items/s
    "cpu_vs_baseline": 1 / 20,          # CPU s per 1,000 items <= 1/20 of the baseline's
    "peak_rss_mib": 10.0,               # VmHWM <= 10 MiB with the B backlog
    "latency_p99_ms": 20.0,             # commit -> request p99 <= 20 ms, idle
}


def say(*parts):
    print("bench:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cluster_cpu_seconds(cluster):
    """CPU of the whole PostgreSQL cluster: the postmaster, its live children, and
    (through the postmaster's cutime/cstime) the children it has reaped."""
    with open(os.path.join(cluster.datadir, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = sum(int(x) for x in fields[11:15]) / CLK_TCK
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def idle_cpu(pid, cluster, seconds):
    """CPU share (1.0 = one core) of a process and of PostgreSQL while nothing is queued."""
    p0, c0, t0 = cpu_seconds(pid), cluster_cpu_seconds(cluster), time.monotonic()
    time.sleep(seconds)
    p1, c1, t1 = cpu_seconds(pid), cluster_cpu_seconds(cluster), time.monotonic()
    return {"window_s": seconds, "process_cpu_share": round((p1 - p0) / (t1 - t0), 3),
            "postgres_cpu_share": round((c1 - c0) / (t1 - t0), 3)}


def status_kib(pid, key):
    return status_kib_file(f"/proc/{pid}/status", key)


def status_kib_file(path, key):
    """A "Key: N kB" line of a /proc file."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def rss_by_mapping(pid, top=8):
    """The largest contributors to a process's RSS (KiB), by mapped file (/proc/PID/smaps)."""
    sizes, name = {}, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                name = head[5] if len(head) > 5 else "[anon]"
            elif head[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(head[1])
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:top])


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem_kib / MIB, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def percentile(values, p):
    """Nearest-rank percentile (with 50 samples, p99 is the largest one)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------
# The pieces: simulator, database, followupd, baseline
# ---------------------------------------------------------------------------

class Sim:
    def __init__(self, workdir, latency_ms, nodelay):
        port_file = os.path.join(workdir, "sim.port")
        self.log_path = os.path.join(workdir, "sim.log")
        self.log = open(self.log_path, "w")
        sim_args = ["--port", "0", "--port-file", port_file, "--no-schema",
                    "--latency-ms", str(latency_ms), "--users", f"{EWS_USER}:{EWS_PASSWORD}"]
        if nodelay:
            cmd = [PYTHON, "-c", SIM_NODELAY_LAUNCHER, os.path.dirname(SIM)] + sim_args
        else:
            cmd = [PYTHON, SIM] + sim_args
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

        def port():
            if self.proc.poll() is not None:
                raise RuntimeError("EWS simulator exited: " + open(self.log_path).read())
            try:
                with open(port_file) as f:
                    return f.read().strip() or None
            except FileNotFoundError:
                return None
        self.base = f"http://127.0.0.1:{int(wait_for(port, 15, what='the EWS simulator'))}"
        self.url = self.base + "/EWS/Exchange.asmx"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method, path, timeout=120):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=b"" if method == "POST" else None)
        with self.opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def stats(self):
        return self.call("GET", "/_sim/stats")

    def reset(self):
        self.call("POST", "/_sim/reset")

    def appointments(self):
        """{mailbox: number of live appointments} (one GET /_sim/mailboxes)."""
        return {mb: sum(1 for i in items if i["kind"] == "appointment")
                for mb, items in self.call("GET", "/_sim/mailboxes").items()}

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def stop_process(proc, timeout=20):
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


class Db:
    def __init__(self, cluster):
        self.conn = psycopg2.connect(cluster.conninfo)
        self.conn.autocommit = True

    def value(self, sql, *args):
        with self.conn.cursor() as cur:
            cur.execute(sql, args or None)
            row = cur.fetchone()
            return row[0] if row else None

    def run(self, sql, *args):
        with self.conn.cursor() as cur:
            cur.execute(sql, args or None)

    def employees(self, count):
        self.run("""INSERT INTO contactlog.employee (login, display_name, email)
                    SELECT 'user' || g, 'User ' || g, 'user' || g || '@bench.example.org'
                    FROM generate_series(1, %s) g""", count)

    def clear(self):
        """No logs, no outbox, no recorded items; employees and attributes stay."""
        tables = ["contactlog.contact_log", "contactlog.outlook_sync", "contactlog.outlook_queue",
                  "contactlog.outlook_item"]
        if self.value("SELECT to_regclass('baseline.outlook_item') IS NOT NULL"):
            tables.append("baseline.outlook_item")
        self.run(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")

    def insert_logs(self, count):
        """count logs with a follow-up, round robin over the employees, in one
        transaction (one INSERT ... SELECT generate_series)."""
        self.run("""
            WITH e AS (SELECT array_agg(id ORDER BY id) AS ids FROM contactlog.employee)
            INSERT INTO contactlog.contact_log
                   (created_by, contact_name, reason, priority, next_contact_at)
            SELECT e.ids[1 + (g - 1) %% cardinality(e.ids)],
                   'Contact ' || g, 'Call back about offer ' || g,
                   (ARRAY['low', 'normal', 'high'])[1 + g %% 3],
                   timestamptz '2030-03-01 09:00:00+00' + (g %% 2000) * interval '30 minutes'
            FROM e, generate_series(1, %s) g""", count)
        self.run("ANALYZE contactlog.contact_log")
        self.run("ANALYZE contactlog.outlook_sync")

    def save_one(self, creator, n):
        """One contact log saved by a CRM user: INSERT + COMMIT; returns (id, commit time)."""
        self.conn.autocommit = False
        try:
            with self.conn.cursor() as cur:
                cur.execute("""INSERT INTO contactlog.contact_log
                                   (created_by, contact_name, reason, next_contact_at)
                               VALUES (%s, %s, %s, '2030-04-01 10:00:00+00') RETURNING id""",
                            (creator, f"Single {n}", f"Latency probe {n}"))
                log_id = cur.fetchone()[0]
            self.conn.commit()
            committed = time.time()
        finally:
            self.conn.autocommit = True
        return log_id, committed

    def followupd_progress(self):
        """(dirty and not parked, parked, done) in followupd's outbox."""
        with self.conn.cursor() as cur:
            # The queue's own cheap figures (the outbox holds the backlog only): the
            # poll itself must not load the database it measures.
            cur.execute("""SELECT d.pending, d.failed,
                                  (SELECT count(*) FROM contactlog.outlook_queue)
                                  - d.pending - d.failed
                           FROM contactlog.followupd_queue_depth d""")
            return cur.fetchone()

    def baseline_done(self):
        return self.value("SELECT count(*) FROM baseline.outlook_item")

    def close(self):
        self.conn.close()


class Followupd:
    def __init__(self, workdir, binary, cluster, sim, concurrency, password_file, tag):
        self.config = os.path.join(workdir, f"followupd-{tag}.conf")
        with open(self.config, "w") as f:
            f.write(f"[database]\nconninfo = {cluster.conninfo}\n\n"
                    f"[exchange]\nurl = {sim.url}\nauth = basic\nusername = {EWS_USER}\n"
                    f"password_file = {password_file}\ntimeout = 30\n\n"
                    f"[delivery]\nconcurrency = {concurrency}\n")
        self.log_path = os.path.join(workdir, f"followupd-{tag}.log")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        self.log = open(self.log_path, "w")
        self.started = time.time()
        self.proc = subprocess.Popen([binary, "-c", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise RuntimeError(f"followupd exited with status {self.proc.returncode}:\n"
                               + self.tail())

    def tail(self, lines=30):
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self):
        code = stop_process(self.proc)
        self.log.close()
        return code


class Baseline:
    def __init__(self, workdir, cluster, sim, password_file, tag):
        self.log_path = os.path.join(workdir, f"baseline-{tag}.log")
        self.log = open(self.log_path, "w")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [PYTHON, BASELINE, "--dsn", cluster.conninfo, "--ews-url", sim.url,
             "--username", EWS_USER, "--password-file", password_file],
            stdout=subprocess.PIPE, stderr=self.log)
        self.pid = self.proc.pid
        # "ready" = imported, connected, LISTENing; the catch-up starts right after.
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        self.ready_at = time.time()
        self.cpu_at_ready = cpu_seconds(self.pid) if self.proc.poll() is None else 0.0
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("baseline did not start:\n" + open(self.log_path).read()[-3000:])
        self.startup_s = self.ready_at - self.started

    def check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"baseline exited with status {self.proc.returncode}:\n"
                               + open(self.log_path).read()[-3000:])

    def stop(self):
        code = stop_process(self.proc)
        self.proc.stdout.close()
        self.log.close()
        return code


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------

def latency_run(db, sim, employee_ids, saves, check_alive, label):
    """saves single saves, one after another, each waiting for its CreateItem."""
    sim.reset()
    samples = []
    for n in range(saves):
        before = sim.stats().get("CreateItem", 0)
        log_id, committed = db.save_one(employee_ids[n % len(employee_ids)], n)
        pattern = re.compile(rf"contact-logs/{log_id}(?!\d)")
        deadline = time.monotonic() + 15
        seen = None
        while seen is None:
            if sim.stats().get("CreateItem", 0) > before:
                for r in sim.call("GET", "/_sim/requests?op=CreateItem&body=1"):
                    if pattern.search(r.get("body") or ""):
                        seen = r["time"]
                        break
            if seen is None:
                if time.monotonic() > deadline:
                    check_alive()
                    raise TimeoutError(f"{label}: no CreateItem for contact log {log_id} "
                                       "within 15 s")
                time.sleep(0.005)
        samples.append((seen - committed) * 1000)
        time.sleep(0.05)   # let the pass finish: the next save meets an idle process
    return {"saves": saves, "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(percentile(samples, 99), 2), "max_ms": round(max(samples), 2),
            "min_ms": round(min(samples), 2), "samples_ms": [round(s, 2) for s in samples]}


def load_history(db, count, no_settle=False):
    """count completed, synced contact logs, as a site with years of history has them:
    every one with its row in followupd's queue, none dirty. Loaded directly (the
    triggers off), since delivering them would only take time."""
    db.run("SET session_replication_role = replica")
    db.run("""
        WITH e AS (SELECT array_agg(id ORDER BY id) AS ids FROM contactlog.employee)
        INSERT INTO contactlog.contact_log
               (created_by, contact_name, reason, status, next_contact_at, created_at)
        SELECT e.ids[1 + (g - 1) %% cardinality(e.ids)], 'History ' || g, 'done ' || g,
               'completed', timestamptz '2020-01-01 09:00+00' + g * interval '1 minute',
               timestamptz '2020-01-01 09:00+00' + g * interval '1 minute'
        FROM e, generate_series(1, %s) g""", count)
    db.run("""INSERT INTO contactlog.outlook_queue (contact_log_id, synced_version, delivered_at)
              SELECT id, nextval('contactlog.outlook_version_seq'), now()
              FROM contactlog.contact_log""")
    db.run("RESET session_replication_role")
    # As a site with history has been: vacuumed (else autovacuum's first pass over a
    # million new rows runs during the measurement, on the same two cores).
    db.run("VACUUM (ANALYZE) contactlog.contact_log")
    db.run("VACUUM (ANALYZE) contactlog.outlook_queue")
    if no_settle:
        return
    # ... and not in the middle of the checkpoint that writing a million rows
    # starts (spread over minutes, its writes would compete with the measurement).
    db.run("CHECKPOINT")


def status_query_ms(db, samples=21):
    """Median time of the query behind sd_notify STATUS= (every 2 s in the daemon)."""
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        db.value("SELECT pending FROM contactlog.followupd_queue_depth")
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def followupd_throughput(args, work, binary, cluster, sim, db, password_file):
    db.clear()
    if args.history:
        say(f"history: loading {args.history} synced contact logs")
        load_history(db, args.history, args.no_settle)
    sim.reset()
    say(f"followupd throughput: inserting {args.items} logs for {args.mailboxes} mailboxes")
    # Logs synced before the run (the history) are not this run's work.
    already_done = db.followupd_progress()[2]
    db.insert_logs(args.items)
    sim_cpu0, pg_cpu0 = cpu_seconds(sim.proc.pid), cluster_cpu_seconds(cluster)
    daemon = Followupd(work, binary, cluster, sim, args.concurrency, password_file, "throughput")
    deadline = daemon.started + args.deadline
    try:
        while True:
            pending, failed, done = db.followupd_progress()
            done -= already_done
            now = time.time()
            if pending == 0:
                break
            daemon.check_alive()
            if now > deadline:
                say(f"followupd throughput: deadline ({args.deadline} s) reached")
                break
            time.sleep(0.05)
        wall = now - daemon.started
        cpu = cpu_seconds(daemon.pid)
        hwm = status_kib(daemon.pid, "VmHWM")
        sim_cpu = cpu_seconds(sim.proc.pid) - sim_cpu0
        pg_cpu = cluster_cpu_seconds(cluster) - pg_cpu0
        stats = sim.stats()
        appointments = sim.appointments()
        total = sum(appointments.values())
        say(f"followupd throughput: {done} synced in {wall:.2f} s, {total} appointments "
            f"in {len(appointments)} mailboxes, requests {stats}")
        result = {
            "items": args.items, "synced": done, "failed": failed, "pending_at_end": pending,
            "wall_s": round(wall, 3), "items_per_s": round(done / wall, 1),
            "cpu_s": round(cpu, 3), "cpu_s_per_1000": round(cpu / max(done, 1) * 1000, 4),
            "vmhwm_kib": hwm, "appointments_in_sim": total,
            "mailboxes_in_sim": len(appointments),
            "appointments_exact": total == args.items, "sim_requests": stats,
            "sim_cpu_s": round(sim_cpu, 2),
            "sim_cpu_share": round(sim_cpu / wall, 2),
            "postgres_cpu_s_per_1000": round(pg_cpu / max(done, 1) * 1000, 4),
        }
        if failed:
            result["last_error"] = db.value("SELECT last_error FROM "
                                            "contactlog.followupd_log_state WHERE failed LIMIT 1")
        time.sleep(1)
        result["idle"] = idle_cpu(daemon.pid, cluster, args.idle_window)
        say(f"followupd idle: {result['idle']}")
        say(f"followupd latency: {args.saves} single saves, daemon idle")
        # The throughput run just wrote (and deleted) its rows: settle the tables and
        # the WAL as a site between bursts has them, so the saves meet an idle server.
        if not args.no_settle:
            db.run("VACUUM (ANALYZE) contactlog.outlook_sync")
            db.run("VACUUM (ANALYZE) contactlog.outlook_item")
            db.run("CHECKPOINT")
        ids = employee_ids(db)
        result_latency = latency_run(db, sim, ids, args.saves, daemon.check_alive, "followupd")
        if args.history:
            result_latency["history_rows"] = args.history
            result_latency["status_query_ms"] = status_query_ms(db)
            say(f"followupd latency with {args.history} history rows: {result_latency}")
    finally:
        code = daemon.stop()
    if code not in (0, None):
        say(f"followupd exited with status {code}:\n{daemon.tail()}")
    return result, result_latency


def followupd_backlog(args, work, binary, cluster, sim, db, password_file):
    db.clear()
    sim.reset()
    say(f"followupd memory: inserting a backlog of {args.backlog} logs")
    t = time.time()
    db.insert_logs(args.backlog)
    say(f"followupd memory: inserted in {time.time() - t:.1f} s; starting a fresh followupd "
        f"(cap {args.backlog_cap} s)")
    daemon = Followupd(work, binary, cluster, sim, args.concurrency, password_file, "backlog")
    try:
        deadline = daemon.started + args.backlog_cap
        anon_peak = 0
        while True:
            pending, failed, done = db.followupd_progress()
            now = time.time()
            daemon.check_alive()
            anon_peak = max(anon_peak, status_kib(daemon.pid, "RssAnon") or 0)
            if pending == 0 or now > deadline:
                break
            time.sleep(0.5)
        hwm = status_kib(daemon.pid, "VmHWM")
        rss = status_kib(daemon.pid, "VmRSS")
        rss_anon = status_kib(daemon.pid, "RssAnon")
        rss_file = status_kib(daemon.pid, "RssFile")
        mappings = rss_by_mapping(daemon.pid)
        pss = status_kib_file(f"/proc/{daemon.pid}/smaps_rollup", "Pss")
        elapsed = now - daemon.started
    finally:
        code = daemon.stop()
    if code not in (0, None):
        say(f"followupd exited with status {code}:\n{daemon.tail()}")
    say(f"followupd memory: {done} of {args.backlog} synced in {elapsed:.1f} s, "
        f"VmHWM {hwm} KiB")
    return {"backlog": args.backlog, "synced": done, "failed": failed,
            "elapsed_s": round(elapsed, 1), "completed": pending == 0,
            "items_per_s": round(done / elapsed, 1),
            "vmhwm_kib": hwm, "vmhwm_mib": round(hwm / 1024, 2),
            "rss_anon_peak_sampled_kib": anon_peak,
            "at_end_kib": {"VmRSS": rss, "RssAnon": rss_anon, "RssFile": rss_file, "Pss": pss},
            "largest_mappings_at_end_kib": mappings}


def baseline_run(args, work, cluster, sim, db, password_file):
    sample = min(args.items, args.baseline_sample) if args.baseline_sample else args.items
    db.clear()
    sim.reset()
    # First start creates the baseline's schema and trigger (its own setup).
    Baseline(work, cluster, sim, password_file, "setup").stop()
    db.clear()
    say(f"baseline throughput: inserting {args.items} logs; timing the first {sample}")
    db.insert_logs(args.items)
    sim_cpu0 = cpu_seconds(sim.proc.pid)
    base = Baseline(work, cluster, sim, password_file, "throughput")
    pg_cpu0 = cluster_cpu_seconds(cluster)
    deadline = base.ready_at + args.deadline
    try:
        while True:
            done = db.baseline_done()
            now = time.time()
            if done >= sample or now > deadline:
                break
            base.check_alive()
            time.sleep(0.05)
        cpu = cpu_seconds(base.pid) - base.cpu_at_ready
        hwm = status_kib(base.pid, "VmHWM")
        sim_cpu = cpu_seconds(sim.proc.pid) - sim_cpu0
        pg_cpu = cluster_cpu_seconds(cluster) - pg_cpu0
        stats = sim.stats()
    finally:
        base.stop()
    wall = now - base.ready_at
    rate = done / wall
    throughput = {
        "items": args.items, "sample": sample, "synced": done, "wall_s": round(wall, 3),
        "items_per_s": round(rate, 1), "startup_s": round(base.startup_s, 2),
        "cpu_s": round(cpu, 3), "cpu_s_per_1000": round(cpu / max(done, 1) * 1000, 4),
        "vmhwm_kib": hwm, "sim_requests": stats, "sim_cpu_s": round(sim_cpu, 2),
        "sim_cpu_share": round(sim_cpu / wall, 2),
        "postgres_cpu_s_per_1000": round(pg_cpu / max(done, 1) * 1000, 4),
        "extrapolated": done < args.items,
        "wall_s_for_all_items": round(args.items / rate, 1) if rate else None,
    }
    say(f"baseline throughput: {done} in {wall:.2f} s = {rate:.1f}/s")

    # Latency: a fresh process with nothing to catch up on. Its first save per mailbox
    # pays for exchangelib's two GetFolder calls (root, calendar) of the new Account;
    # those M saves are measured apart ("cold"), then args.saves warm ones as for
    # followupd, whose measurement follows its throughput run.
    db.clear()
    say(f"baseline latency: {args.mailboxes} cold + {args.saves} single saves, baseline idle")
    base = Baseline(work, cluster, sim, password_file, "latency")
    try:
        time.sleep(1)
        throughput["idle"] = idle_cpu(base.pid, cluster, args.idle_window)
        say(f"baseline idle: {throughput['idle']}")
        ids = employee_ids(db)
        cold = latency_run(db, sim, ids, len(ids), base.check_alive, "baseline")
        latency = latency_run(db, sim, ids, args.saves, base.check_alive, "baseline")
    finally:
        base.stop()
    latency["cold_first_save_per_mailbox"] = {k: v for k, v in cold.items()
                                              if k != "samples_ms"}

    result = {"throughput": throughput, "latency": latency}
    if args.baseline_backlog_cap > 0:
        db.clear()
        sim.reset()
        say(f"baseline memory: a backlog of {args.backlog} logs, cap {args.baseline_backlog_cap} s")
        db.insert_logs(args.backlog)
        base = Baseline(work, cluster, sim, password_file, "backlog")
        try:
            time.sleep(args.baseline_backlog_cap)
            base.check_alive()
            hwm = status_kib(base.pid, "VmHWM")
            done = db.baseline_done()
        finally:
            base.stop()
        result["backlog"] = {"backlog": args.backlog, "synced": done,
                             "elapsed_s": args.baseline_backlog_cap, "vmhwm_kib": hwm,
                             "vmhwm_mib": round(hwm / 1024, 2)}
        say(f"baseline memory: {done} synced, VmHWM {hwm} KiB")
    return result


def employee_ids(db):
    with db.conn.cursor() as cur:
        cur.execute("SELECT id FROM contactlog.employee ORDER BY id")
        return [r[0] for r in cur.fetchall()]


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def verdicts(args, results):
    f = results["followupd"]
    b = results.get("baseline")
    bound = args.concurrency / (args.latency_ms / 1000) if args.latency_ms else None
    rows = []

    def add(name, value, target, ok):
        rows.append({"target": name, "value": value, "goal": target,
                     "result": None if ok is None else ("PASS" if ok else "MISS")})

    tp = f["throughput"]["items_per_s"]
    if b:
        ratio = tp / b["throughput"]["items_per_s"]
        add("throughput vs baseline", f"{ratio:.1f}x", "≥ 20x",
            ratio >= TARGETS["throughput_vs_baseline"])
    else:
        add("throughput vs baseline", "n/a (--skip-baseline)", "≥ 20x", None)
    if bound:
        share = tp / bound
        add(f"throughput vs C/L = {bound:.0f}/s", f"{share * 100:.0f} %", "≥ 90 %",
            share >= TARGETS["throughput_vs_bound"])
    cpu = f["throughput"]["cpu_s_per_1000"]
    if b:
        bcpu = b["throughput"]["cpu_s_per_1000"]
        add("CPU per 1,000 items vs baseline", f"1/{bcpu / cpu:.1f}" if cpu else "0",
            "≤ 1/20", cpu <= bcpu * TARGETS["cpu_vs_baseline"])
    else:
        add("CPU per 1,000 items vs baseline", "n/a (--skip-baseline)", "≤ 1/20", None)
    mib = f["backlog"]["vmhwm_mib"]
    add(f"peak RSS, backlog {args.backlog}", f"{mib:.1f} MiB", "≤ 10 MiB",
        mib <= TARGETS["peak_rss_mib"])
    p99 = f["latency"]["p99_ms"]
    add("commit→request p99, idle", f"{p99:.1f} ms", "≤ 20 ms", p99 <= TARGETS["latency_p99_ms"])
    return rows


def markdown(args, results):
    f, b = results["followupd"], results.get("baseline")
    ft, fl, fb = f["throughput"], f["latency"], f["backlog"]
    m = results["machine"]
    lines = [
        f"Workload: {args.items} logs, {args.mailboxes} mailboxes, simulator latency "
        f"{args.latency_ms} ms (schema validation off{', TCP_NODELAY' if not args.sim_nagle else ''}), "
        f"followupd concurrency {args.concurrency}, backlog {args.backlog}. "
        f"Machine: {m['nproc']} × {m['cpu_model']}, {m['mem_gib']} GiB, "
        f"load average at start {m['loadavg_at_start'][0]}.",
        "",
        "| figure | followupd | baseline (exchangelib) | ratio |",
        "|---|---:|---:|---:|",
    ]

    def row(name, fv, bv, ratio=""):
        lines.append(f"| {name} | {fv} | {bv} | {ratio} |")

    if b:
        bt, bl = b["throughput"], b["latency"]
        sample = (f" (first {bt['synced']} of {bt['items']}, extrapolated: "
                  f"{bt['wall_s_for_all_items']} s for all)" if bt["extrapolated"] else "")
        row("throughput, items/s", f"{ft['items_per_s']:.1f}", f"{bt['items_per_s']:.1f}{sample}",
            f"{ft['items_per_s'] / bt['items_per_s']:.1f}×")
        row(f"wall time for {args.items} items, s", f"{ft['wall_s']:.2f}",
            f"{bt['wall_s_for_all_items']}" + (" (extrapolated)" if bt["extrapolated"] else ""))
        row("CPU s per 1,000 items", f"{ft['cpu_s_per_1000']:.3f}", f"{bt['cpu_s_per_1000']:.3f}",
            f"1/{bt['cpu_s_per_1000'] / ft['cpu_s_per_1000']:.1f}" if ft["cpu_s_per_1000"] else "")
        row("commit→request p50, ms", f"{fl['p50_ms']:.1f}", f"{bl['p50_ms']:.1f}")
        row("commit→request p99, ms", f"{fl['p99_ms']:.1f}", f"{bl['p99_ms']:.1f}")
        bc = bl["cold_first_save_per_mailbox"]
        row("commit→request p50 / p99, first save per mailbox after start, ms", "",
            f"{bc['p50_ms']:.1f} / {bc['p99_ms']:.1f}")
        row("peak RSS during throughput run, MiB", f"{ft['vmhwm_kib'] / 1024:.1f}",
            f"{bt['vmhwm_kib'] / 1024:.1f}")
        bb = b.get("backlog")
        row(f"peak RSS with {args.backlog} backlog, MiB",
            f"{fb['vmhwm_mib']:.1f} ({fb['synced']} done in {fb['elapsed_s']} s)",
            f"{bb['vmhwm_mib']:.1f} ({bb['synced']} done in {bb['elapsed_s']} s)" if bb else "n/a")
        row("peak private memory (RssAnon, sampled) with the backlog, MiB",
            f"{fb['rss_anon_peak_sampled_kib'] / 1024:.1f}", "")
        row("simulator CPU share during throughput run", f"{ft['sim_cpu_share']:.2f}",
            f"{bt['sim_cpu_share']:.2f}")
        row("EWS requests during throughput run",
            ", ".join(f"{k} {v}" for k, v in ft["sim_requests"].items()),
            ", ".join(f"{k} {v}" for k, v in bt["sim_requests"].items()))
        row("PostgreSQL CPU s per 1,000 items", f"{ft['postgres_cpu_s_per_1000']:.3f}",
            f"{bt['postgres_cpu_s_per_1000']:.3f}")
        fi, bi = ft["idle"], bt["idle"]
        row("idle: process / PostgreSQL CPU, % of a core",
            f"{fi['process_cpu_share'] * 100:.1f} / {fi['postgres_cpu_share'] * 100:.1f}",
            f"{bi['process_cpu_share'] * 100:.1f} / {bi['postgres_cpu_share'] * 100:.1f}")
    else:
        row("throughput, items/s", f"{ft['items_per_s']:.1f}", "n/a")
        row(f"wall time for {args.items} items, s", f"{ft['wall_s']:.2f}", "n/a")
        row("CPU s per 1,000 items", f"{ft['cpu_s_per_1000']:.3f}", "n/a")
        row("commit→request p50, ms", f"{fl['p50_ms']:.1f}", "n/a")
        row("commit→request p99, ms", f"{fl['p99_ms']:.1f}", "n/a")
        row("peak RSS during throughput run, MiB", f"{ft['vmhwm_kib'] / 1024:.1f}", "n/a")
        row(f"peak RSS with {args.backlog} backlog, MiB",
            f"{fb['vmhwm_mib']:.1f} ({fb['synced']} done in {fb['elapsed_s']} s)", "n/a")
        row("peak private memory (RssAnon, sampled) with the backlog, MiB",
            f"{fb['rss_anon_peak_sampled_kib'] / 1024:.1f}", "n/a")
        row("simulator CPU share during throughput run", f"{ft['sim_cpu_share']:.2f}", "n/a")
        row("EWS requests during throughput run",
            ", ".join(f"{k} {v}" for k, v in ft["sim_requests"].items()), "n/a")
        row("PostgreSQL CPU s per 1,000 items", f"{ft['postgres_cpu_s_per_1000']:.3f}", "n/a")
        fi = ft["idle"]
        row("idle: process / PostgreSQL CPU, % of a core",
            f"{fi['process_cpu_share'] * 100:.1f} / {fi['postgres_cpu_share'] * 100:.1f}", "n/a")
    lines += ["", "| target (issue 6) | measured | goal | result |", "|---|---:|---:|:---:|"]
    for v in results["verdicts"]:
        lines.append(f"| {v['target']} | {v['value']} | {v['goal']} | {v['result'] or 'n/a'} |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=5000, help="N logs for throughput (5000)")
    p.add_argument("--mailboxes", type=int, default=50, help="M employees/mailboxes (50)")
    p.add_argument("--latency-ms", type=int, default=20, help="simulator latency L (20)")
    p.add_argument("--concurrency", type=int, default=8, help="followupd [delivery] concurrency C (8)")
    p.add_argument("--backlog", type=int, default=100000, help="B logs for the memory run (100000)")
    p.add_argument("--backlog-cap", type=float, default=120,
                   help="seconds followupd may work on the backlog (120)")
    p.add_argument("--skip-baseline", action="store_true", help="don't run the exchangelib baseline")
    p.add_argument("--baseline-sample", type=int, default=1000,
                   help="time the baseline over the first S items and extrapolate to N "
                        "(1000; 0 = all N)")
    p.add_argument("--baseline-backlog-cap", type=float, default=20,
                   help="seconds the baseline may work on the backlog (20; 0 = skip)")
    p.add_argument("--saves", type=int, default=50, help="single saves for latency (50)")
    p.add_argument("--no-settle", action="store_true",
                   help="measure latency right after the load and the throughput run, "
                        "without VACUUM and CHECKPOINT first (shows their effect)")
    p.add_argument("--history", type=int, default=0,
                   help="H synced, completed logs loaded first (issue 12: 1000000); the "
                        "latency and the STATUS= query are measured with them (0)")
    p.add_argument("--idle-window", type=float, default=5,
                   help="seconds over which idle CPU is measured (5)")
    p.add_argument("--deadline", type=float, default=300,
                   help="give up on a throughput run after this many seconds (300)")
    p.add_argument("--sim-nagle", action="store_true",
                   help="run the simulator as it is (no TCP_NODELAY: ~40 ms delayed-ACK "
                        "stall per keep-alive answer)")
    p.add_argument("--binary", default=os.path.join(TOP, "build", "followupd"),
                   help="followupd to measure (copied to a temporary directory first)")
    p.add_argument("--json", default=os.path.join(HERE, "results.json"),
                   help="where to write the results (bench/results.json)")
    args = p.parse_args(argv)
    for name in ("items", "mailboxes", "concurrency", "backlog", "saves"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.latency_ms < 0:
        p.error("--latency-ms must not be negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    results = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "parameters": {
                   "items": args.items, "mailboxes": args.mailboxes, "latency_ms": args.latency_ms,
                   "concurrency": args.concurrency, "backlog": args.backlog,
                   "backlog_cap_s": args.backlog_cap, "saves": args.saves,
                   "baseline_sample": args.baseline_sample,
                   "sim_schema_validation": False, "sim_tcp_nodelay": not args.sim_nagle}}
    say(f"machine: {results['machine']}")
    work = tempfile.mkdtemp(prefix="followupd-bench-")
    cluster = sim = db = None
    try:
        # A private copy: others may rebuild build/followupd while we run.
        binary = os.path.join(work, "followupd")
        shutil.copy2(args.binary, binary)
        with open(binary, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        version = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True).stdout.strip()
        head = subprocess.run(["git", "-C", TOP, "describe", "--always", "--dirty"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True).stdout.strip()
        results["followupd_binary"] = {"source": args.binary, "sha256": digest,
                                       "version": version, "git": head}
        password_file = os.path.join(work, "ews-password")
        with open(password_file, "w") as f:
            f.write(EWS_PASSWORD + "\n")
        os.chmod(password_file, stat.S_IRUSR | stat.S_IWUSR)
        if os.geteuid() == 0:
            os.chmod(work, 0o755)   # PostgreSQL runs as 'postgres'; it needs nothing here

        say("starting PostgreSQL and the EWS simulator")
        cluster = PgCluster().start()
        cluster.psql("-f", INSTALL_SQL)
        sim = Sim(work, args.latency_ms, nodelay=not args.sim_nagle)
        db = Db(cluster)
        db.employees(args.mailboxes)

        throughput, latency = followupd_throughput(args, work, binary, cluster, sim, db,
                                                   password_file)
        backlog = followupd_backlog(args, work, binary, cluster, sim, db, password_file)
        results["followupd"] = {"throughput": throughput, "latency": latency, "backlog": backlog}
        if not args.skip_baseline:
            results["baseline"] = baseline_run(args, work, cluster, sim, db, password_file)
        results["verdicts"] = verdicts(args, results)
        results["duration_s"] = round(time.time() - started, 1)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        print(markdown(args, results))
        print(f"\nResults (JSON): {args.json}  (whole run {results['duration_s']} s)")
        missing = not throughput["appointments_exact"]
        if missing:
            say(f"WARNING: the simulator holds {throughput['appointments_in_sim']} appointments, "
                f"expected exactly {args.items}")
        return 1 if missing else 0
    finally:
        if db:
            db.close()
        if sim:
            sim.stop()
        if cluster:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
