#!/usr/bin/python3
"""The baseline of bench/run_bench.py: what an administrator would write instead of
followupd — a plain Python script with Debian's python3-exchangelib and
python3-psycopg2.

It keeps its own bookkeeping (schema `baseline`: a table of the logs it has put into
Outlook, and an AFTER INSERT trigger that sends NOTIFY on its own channel). It uses
none of followupd's outbox functions. On start it catches up (every log with a
follow-up that has no item yet), then waits for notifications and catches up again
on each one. One item at a time, one thread, one HTTP connection (exchangelib's
session pool), as the textbook examples do.

    /usr/bin/python3 bench/baseline_exchangelib.py --dsn DSN --ews-url URL \
        --username USER --password-file FILE

Prints "ready" on stdout once it is connected and listening (before the catch-up),
logs to stderr, stops cleanly on SIGTERM/SIGINT.
"""
import argparse
import datetime
import html
import logging
import select
import signal
import sys

import psycopg2
from exchangelib import (IMPERSONATION, Account, CalendarItem, Configuration, Credentials,
                         EWSDateTime, EWSTimeZone, HTMLBody, Version)
from exchangelib.items import SEND_TO_NONE
from exchangelib.version import EXCHANGE_2013_SP1

SETUP_SQL = """
CREATE SCHEMA IF NOT EXISTS baseline;
CREATE TABLE IF NOT EXISTS baseline.outlook_item (
    contact_log_id bigint PRIMARY KEY,
    item_id        text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION baseline.notify_new_log() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('baseline_contact_log', NEW.id::text);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS baseline_new_log ON contactlog.contact_log;
CREATE TRIGGER baseline_new_log AFTER INSERT ON contactlog.contact_log
    FOR EACH ROW EXECUTE FUNCTION baseline.notify_new_log();
"""

PENDING_SQL = """
SELECT l.id, l.contact_name, l.reason, l.priority, l.next_contact_at, e.email
FROM contactlog.contact_log l
JOIN contactlog.employee e ON e.id = l.created_by
WHERE l.next_contact_at IS NOT NULL AND l.status <> 'completed' AND e.email IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM baseline.outlook_item b WHERE b.contact_log_id = l.id)
ORDER BY l.id
"""

UTC = EWSTimeZone("UTC")
log = logging.getLogger("baseline")
stopping = False
idle = False    # waiting in select(): SIGTERM may end the process right there


def attributes(cur):
    cur.execute("SELECT name, value FROM contactlog.attribute")
    values = dict(cur.fetchall())
    return (int(values.get("AppointmentDurationInMinutes", 30)),
            int(values.get("ReminderMinutesBeforeStart", 15)),
            values.get("LinkUrlTemplate", "https://crm.example.org/contact-logs/{id}"))


def main():
    global idle
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--ews-url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password-file", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def stop(*_):
        global stopping
        stopping = True
        if idle:
            raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    with open(args.password_file) as f:
        password = f.read().strip()
    config = Configuration(service_endpoint=args.ews_url,
                           credentials=Credentials(args.username, password),
                           auth_type="basic",                       # no NTLM probe
                           version=Version(build=EXCHANGE_2013_SP1))  # no version probe
    accounts = {}

    def account(email):
        if email not in accounts:
            accounts[email] = Account(email, config=config, autodiscover=False,
                                      access_type=IMPERSONATION, default_timezone=UTC)
        return accounts[email]

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(SETUP_SQL)
    cur.execute("LISTEN baseline_contact_log")
    print("ready", flush=True)

    def catch_up():
        duration, reminder, link_template = attributes(cur)
        cur.execute(PENDING_SQL)
        for log_id, contact, reason, priority, next_contact, email in cur.fetchall():
            if stopping:
                return
            link = link_template.replace("{id}", str(log_id))
            subject = ((reason or "").split("\n")[0][:255]) or f"Follow up: {contact}"
            start = EWSDateTime.from_datetime(next_contact.astimezone(datetime.timezone.utc))
            body = (f"<p>Contact: {html.escape(contact)}</p>"
                    f"<p>{html.escape(reason or '')}</p>"
                    f"<p>Priority: {priority}</p>"
                    f'<p><a href="{html.escape(link)}">Open the contact log</a></p>')
            try:
                acc = account(email)
                item = CalendarItem(account=acc, folder=acc.calendar, subject=subject,
                                    body=HTMLBody(body), start=start,
                                    end=start + datetime.timedelta(minutes=duration),
                                    reminder_is_set=True,
                                    reminder_minutes_before_start=reminder,
                                    importance=priority.capitalize(),
                                    legacy_free_busy_status="Busy")
                item.save(send_meeting_invitations=SEND_TO_NONE)
            except Exception as exc:  # noqa: BLE001 — log it, try again on the next wake-up
                log.error("contact log %s (%s): %s", log_id, email, exc)
                continue
            cur.execute("INSERT INTO baseline.outlook_item (contact_log_id, item_id) "
                        "VALUES (%s, %s) ON CONFLICT DO NOTHING", (log_id, item.id))
            log.info("contact log %s: appointment created in %s", log_id, email)

    catch_up()
    while not stopping:
        # A notification that arrived during catch_up()'s own queries is already in
        # conn.notifies: the socket will not wake select() for it again.
        if not conn.notifies:
            idle = True
            try:
                readable, _, _ = select.select([conn], [], [], 5)
            finally:
                idle = False
            if not readable:
                continue
            conn.poll()
        if conn.notifies:
            conn.notifies.clear()
            catch_up()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
