#!/usr/bin/env python3
"""followupd demo: a throwaway PostgreSQL, the EWS simulator on loopback and the
real daemon. Saves a few contact logs and prints what arrived in each mailbox.
Everything it starts is stopped again. Run through scripts/demo."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
from pgcluster import PgCluster, wait_for  # noqa: E402

BUILD = os.environ.get("FOLLOWUPD_BUILD", os.path.join(TOP, "build"))
PYTHON = "/usr/bin/python3"


def main():
    work = tempfile.mkdtemp(prefix="followupd-demo-")
    started = []
    try:
        print("== starting a throwaway PostgreSQL cluster")
        pg = PgCluster().start()
        started.append(pg.stop)
        pg.psql("-f", os.path.join(TOP, "sql", "install.sql"))

        print("== starting the EWS simulator on 127.0.0.1")
        port_file = os.path.join(work, "sim.port")
        schema = os.environ.get("FOLLOWUPD_EWS_SCHEMA") or os.path.join(TOP, "..", "shared",
                                                                         "ews-schema")
        if os.path.isfile(os.path.join(schema, "ews-envelope.xsd")):
            print("   every request followupd sends is checked against Microsoft's EWS "
                  "schema, as Exchange does")
        else:
            print(f"   note: Microsoft's EWS schema is not in {os.path.abspath(schema)}, so the\n"
                  "   simulator answers requests without checking them against it: the demo\n"
                  "   still shows what arrives in each mailbox, but would not notice a request\n"
                  "   Exchange refuses (ErrorSchemaValidation). Set FOLLOWUPD_EWS_SCHEMA to the\n"
                  "   directory holding ews-envelope.xsd, messages.xsd and types.xsd to check.")
        sim_log = open(os.path.join(work, "sim.log"), "w")
        sim = subprocess.Popen([PYTHON, os.path.join(TOP, "tests", "sim", "ews_sim.py"),
                                "--port", "0", "--port-file", port_file,
                                "--users", "svc-followupd:demo-password",
                                "--schema-dir", schema], stderr=sim_log)
        started.append(lambda: (sim.terminate(), sim.wait()))
        try:
            port = wait_for(lambda: os.path.exists(port_file) and open(port_file).read().strip(),
                            timeout=15, what="the simulator")
        except TimeoutError:
            sim_log.flush()
            sys.stderr.write(open(sim_log.name).read())
            raise
        base = f"http://127.0.0.1:{port}"

        password_file = os.path.join(work, "ews-password")
        with open(password_file, "w") as f:
            f.write("demo-password\n")
        os.chmod(password_file, 0o600)
        config = os.path.join(work, "followupd.conf")
        with open(config, "w") as f:
            f.write(f"[database]\nconninfo = {pg.conninfo}\n\n[exchange]\n"
                    f"url = {base}/EWS/Exchange.asmx\nauth = basic\n"
                    f"username = svc-followupd\npassword_file = {password_file}\n")

        print("== starting followupd")
        daemon = subprocess.Popen([os.path.join(BUILD, "followupd"), "-c", config])
        started.append(lambda: (daemon.send_signal(signal.SIGTERM), daemon.wait()))

        print("== saving contact logs")
        pg.psql("-c", """
            UPDATE contactlog.attribute SET value = '1' WHERE name = 'AddToTasks';
            INSERT INTO contactlog.employee (login, display_name, email) VALUES
              ('alice', 'Alice Archer', 'alice@example.org'),
              ('bob',   'Bob Baker',    'bob@example.org');
            INSERT INTO contactlog.contact_log
              (created_by, contact_name, reason, priority, next_contact_at, assigned_to) VALUES
              (1, 'Ada Lovelace',  'Discuss the renewal', 'high', '2030-03-01 09:00+00', 2),
              (1, 'Grace Hopper',  'Send the quote',      'normal', '2030-03-02 14:30+00', NULL),
              (2, 'Alan Turing',   '',                    'low', '2030-03-03 08:15+00', NULL),
              (2, 'Edsger Dijkstra', 'No follow-up: nothing is sent', 'normal', NULL, NULL);
        """)
        expected = 6   # three follow-ups: an appointment and a task each

        def mailboxes():
            with urllib.request.urlopen(base + "/_sim/mailboxes", timeout=5) as r:
                return json.load(r)

        wait_for(lambda: sum(len(v) for v in mailboxes().values()) >= expected, timeout=15,
                 what="the appointments")
        print()
        for mailbox, items in sorted(mailboxes().items()):
            print(f"Mailbox {mailbox}:")
            for item in items:
                link = item["body"].split('href="', 1)[1].split('"', 1)[0]
                print(f"  {item['kind']:<11} {item['subject']!r}")
                if item["kind"] == "appointment":
                    when = f"{item['start']} -> {item['end']}"
                else:
                    when = f"due {item['due_date']}"
                print(f"              {when}  importance {item['importance']}  link {link}")
        print()
        print("demo: OK")
        return 0
    finally:
        for stop in reversed(started):
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                print(f"demo: while stopping: {e}", file=sys.stderr)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
