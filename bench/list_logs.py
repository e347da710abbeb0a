"""Benchmark of the read side at scale (issue 5): a throwaway PostgreSQL cluster,
sql/install.sql, 1,000,000 contact logs of ~500 employees, ANALYZE, then the
time of contactlog.list_logs (first page, page 5000, owner searches, other
sorts), contactlog.summary and contactlog.open_follow_ups, and the plans the
function really ran (auto_explain, nested statements, sent back as NOTICEs).

    bench/list_logs.sh [--logs N] [--employees N] [--runs N] [--no-explain]

Times are wall-clock from a client on loopback (psycopg2: execute + fetch), the
median of --runs runs after warm-up runs; min and 90th percentile as well.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
from pgcluster import PgCluster  # noqa: E402

FIRST_NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hans", "Ida", "Jonas",
               "Karla", "Lukas", "Marie", "Noah", "Olga", "Paul", "Queenie", "Rosa", "Simon",
               "Tina", "Uwe", "Vera", "Walter", "Xenia", "Yusuf"]
LAST_NAMES = ["Schmidt", "Weber", "Fischer", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
              "Koch", "Richter", "Klein", "Wolf", "Neumann", "Schwarz", "Braun", "Zimmermann",
              "Hartmann", "Lange", "Krause", "Lehmann"]


def sql_array(words):
    return "ARRAY[" + ", ".join("'%s'" % w for w in words) + "]"


def load(conn, logs, employees):
    """Employees, then every log in one INSERT ... SELECT generate_series.
    (Only integers from the command line go into the SQL text.)"""
    logs, employees = int(logs), int(employees)
    with conn.cursor() as cur:
        cur.execute(f"""
            INSERT INTO contactlog.employee (login, display_name, email, role)
            SELECT lower(f) || '.' || lower(l) || CASE WHEN g > n THEN g::text ELSE '' END,
                   f || ' ' || l, lower(f) || '.' || lower(l) || g || '@example.org',
                   CASE WHEN g % 50 = 0 THEN 'admin' ELSE 'staff' END
            FROM generate_series(1, {employees}) g,
                 LATERAL (SELECT ({sql_array(FIRST_NAMES)})[1 + (g - 1) % {len(FIRST_NAMES)}] AS f,
                                 ({sql_array(LAST_NAMES)})[1 + ((g - 1) / {len(FIRST_NAMES)}) % {len(LAST_NAMES)}] AS l,
                                 {len(FIRST_NAMES) * len(LAST_NAMES)} AS n) names
            """)
        # followupd is not running: its outbox trigger would queue every log
        # (and notify a million times). The count triggers stay on.
        cur.execute("ALTER TABLE contactlog.contact_log DISABLE TRIGGER contact_log_outlook_dirty")
        cur.execute("SELECT setseed(0.42)")
        started = time.monotonic()
        cur.execute(f"""
            INSERT INTO contactlog.contact_log
                (created_by, created_at, contact_name, status, owner_id, priority, reason,
                 next_contact_at)
            SELECT 1 + floor(r_creator * {employees})::int,
                   created_at,
                   ({sql_array(FIRST_NAMES)})[1 + floor(r_first * {len(FIRST_NAMES)})::int] || ' '
                   || ({sql_array(LAST_NAMES)})[1 + floor(r_last * {len(LAST_NAMES)})::int] || ' ' || g,
                   status,
                   CASE WHEN status = 'in_progress' THEN 1 + floor(r_owner * {employees})::int END,
                   CASE WHEN r_priority < 0.2 THEN 'low' WHEN r_priority < 0.8 THEN 'normal'
                        ELSE 'high' END,
                   'Call back about offer ' || g,
                   CASE WHEN r_follow_up < CASE WHEN status = 'completed' THEN 0.5 ELSE 0.8 END
                        THEN created_at + r_when * interval '60 days' END
            FROM (SELECT g, random() AS r_creator, random() AS r_first, random() AS r_last,
                         random() AS r_owner, random() AS r_priority, random() AS r_follow_up,
                         random() AS r_when,
                         now() - random() * interval '3 years' AS created_at,
                         CASE WHEN r < 0.08 THEN 'open' WHEN r < 0.25 THEN 'in_progress'
                              ELSE 'completed' END AS status
                  FROM (SELECT g, random() AS r FROM generate_series(1, {logs}) g) s) v
            """)
        load_seconds = time.monotonic() - started
        cur.execute("ALTER TABLE contactlog.contact_log ENABLE TRIGGER contact_log_outlook_dirty")
        # The cluster runs with synchronous_commit off; VACUUM marks pages
        # all-visible only once the commit is flushed, so flush it now.
        cur.execute("SET LOCAL synchronous_commit = on")
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        started = time.monotonic()
        cur.execute("VACUUM ANALYZE contactlog.contact_log")
        cur.execute("VACUUM ANALYZE contactlog.employee")
        cur.execute("VACUUM ANALYZE contactlog.contact_log_tally")
        vacuum_seconds = time.monotonic() - started
    return load_seconds, vacuum_seconds


def timed(cur, sql, runs, warmup=3):
    samples = []
    rows = None
    for i in range(warmup + runs):
        started = time.perf_counter()
        cur.execute(sql)
        rows = cur.fetchall()
        elapsed = (time.perf_counter() - started) * 1000
        if i >= warmup:
            samples.append(elapsed)
    samples.sort()
    return {"median": statistics.median(samples), "min": samples[0],
            "p90": samples[min(len(samples) - 1, int(round(0.9 * (len(samples) - 1))))],
            "rows": len(rows), "total": rows[0][-1] if rows else None}


def explain(conn, sql):
    """The plans of the statements run inside sql (auto_explain, as NOTICEs)."""
    del conn.notices[:]
    with conn.cursor() as cur:
        cur.execute("LOAD 'auto_explain'")
        cur.execute("SET auto_explain.log_min_duration = 0")
        cur.execute("SET auto_explain.log_analyze = on")
        cur.execute("SET auto_explain.log_buffers = on")
        cur.execute("SET auto_explain.log_timing = on")
        cur.execute("SET auto_explain.log_nested_statements = on")
        cur.execute("SET auto_explain.log_level = notice")
        cur.execute("SET client_min_messages = notice")
        cur.execute(sql)
        cur.fetchall()
        cur.execute("SET auto_explain.log_min_duration = -1")
    return "".join(conn.notices)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", type=int, default=1_000_000)
    ap.add_argument("--employees", type=int, default=500)
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--no-explain", action="store_true")
    args = ap.parse_args()

    cluster = PgCluster(dbname="bench").start()
    try:
        cluster.psql("-f", os.path.join(TOP, "sql", "install.sql"))
        conn = psycopg2.connect(cluster.conninfo)
        print(f"loading {args.logs:,} logs of {args.employees} employees ...", flush=True)
        load_seconds, vacuum_seconds = load(conn, args.logs, args.employees)

        with conn.cursor() as cur:
            cur.execute("SELECT version(), current_setting('shared_buffers'), "
                        "pg_size_pretty(pg_table_size('contactlog.contact_log')), "
                        "pg_size_pretty(pg_indexes_size('contactlog.contact_log'))")
            version, shared_buffers, table_size, index_size = cur.fetchone()
            cur.execute("SELECT * FROM contactlog.summary")
            summary = cur.fetchone()
            cur.execute("SELECT min(id) FROM contactlog.contact_log WHERE status = 'open'")
            open_log = int(cur.fetchone()[0])
            # An owner search by surname (20 surnames: about 25 owners) and by full name.
            surname, full = "weber", "Anna Schmidt"
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), platform.processor())

        queries = [
            ("list_logs() — first page (newest first)", "SELECT * FROM contactlog.list_logs()"),
            ("list_logs(page => 5000)", "SELECT * FROM contactlog.list_logs(page => 5000)"),
            (f"list_logs(owner_search => '{surname}') — a surname, ~25 owners",
             f"SELECT * FROM contactlog.list_logs(owner_search => '{surname}')"),
            (f"list_logs(owner_search => '{full.lower()}') — one owner",
             f"SELECT * FROM contactlog.list_logs(owner_search => '{full.lower()}')"),
            ("SELECT * FROM contactlog.summary", "SELECT * FROM contactlog.summary"),
            ("list_logs(status => 'open')", "SELECT * FROM contactlog.list_logs(status => 'open')"),
            ("list_logs(sort => 'owner', descending => false)",
             "SELECT * FROM contactlog.list_logs(sort => 'owner', descending => false)"),
            ("list_logs(sort => 'next_contact_at', descending => false)",
             "SELECT * FROM contactlog.list_logs(sort => 'next_contact_at', descending => false)"),
            ("list_logs(sort => 'priority')", "SELECT * FROM contactlog.list_logs(sort => 'priority')"),
            ("list_logs(sort => 'contact_name', page => 5000)",
             "SELECT * FROM contactlog.list_logs(sort => 'contact_name', page => 5000)"),
            ("open_follow_ups ORDER BY next_contact_at LIMIT 20",
             "SELECT * FROM contactlog.open_follow_ups ORDER BY next_contact_at, log_id LIMIT 20"),
            ("for comparison: SELECT count(*) FROM contact_log",
             "SELECT count(*) FROM contactlog.contact_log"),
            # Writes, with every trigger and index in place (outbox trigger on).
            ("writes: take + surrender of an open log (one round trip)",
             f"SELECT contactlog.take({open_log}, 2); SELECT contactlog.surrender({open_log}, 2)"),
            ("writes: INSERT one log with a follow-up",
             "INSERT INTO contactlog.contact_log (created_by, contact_name, next_contact_at) "
             "VALUES (3, 'bench', now() + interval '1 day') RETURNING id"),
        ]
        conn.autocommit = True
        results = []
        with conn.cursor() as cur:
            for title, sql in queries:
                results.append((title, timed(cur, sql, args.runs)))
            # Skew: the surname's owners' logs become older than everyone else's, so
            # a plan that walks a date index hoping to meet them early would read
            # nearly every other log first.
            cur.execute(f"""
                UPDATE contactlog.contact_log SET created_at = created_at - interval '5 years'
                WHERE owner_id IN (SELECT id FROM contactlog.employee
                                   WHERE display_name ILIKE '%{surname}%')
                """)
            cur.execute("VACUUM ANALYZE contactlog.contact_log")
            title = f"list_logs(owner_search => '{surname}') — skewed: their logs older than all others"
            results.append((title, timed(cur, f"SELECT * FROM contactlog.list_logs(owner_search => '{surname}')",
                                         args.runs)))

        print()
        print(f"machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}")
        print(f"server: {version.split(',')[0]}, shared_buffers {shared_buffers}, fsync off")
        print(f"data: {args.logs:,} logs, {args.employees} employees; table {table_size}, "
              f"indexes {index_size}")
        print(f"summary: open {summary[0]:,}, in progress {summary[1]:,}, completed {summary[2]:,}, "
              f"open follow-ups {summary[3]:,}, badge {summary[4]:,}")
        print(f"load: one INSERT ... SELECT generate_series {load_seconds:.1f} s, "
              f"VACUUM ANALYZE {vacuum_seconds:.1f} s")
        print(f"times: wall clock on loopback, ms, {args.runs} runs after 3 warm-up runs")
        print()
        print("| query | median ms | min ms | p90 ms | rows | total_count |")
        print("|---|---:|---:|---:|---:|---:|")
        for title, r in results:
            total = f"{r['total']:,}" if "list_logs(" in title and r["total"] is not None else ""
            print(f"| `{title}` | {r['median']:.2f} | {r['min']:.2f} | {r['p90']:.2f} | {r['rows']} | {total} |")

        if not args.no_explain:
            for title, sql in queries[:8] + queries[10:11]:
                print(f"\n---- EXPLAIN (ANALYZE, BUFFERS) of what ran for: {sql}\n")
                print(explain(conn, sql))
        conn.close()
    except subprocess.CalledProcessError as e:
        sys.stderr.write((e.stdout or "") + (e.stderr or "") + cluster.log())
        raise
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
