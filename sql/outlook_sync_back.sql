-- Outlook → CRM (SyncFromOutlook = 1; issue 17, SPEC §7, docs/architecture.md
-- "Outlook → CRM"): which mailboxes followupd watches, where it is in each, and
-- the one function through which what staff did to our items in Outlook enters
-- the database, as the mailbox's employee under the ownership rules. Replaced on
-- every run of install.sql, after the queue (sql/queue.sql); the tables are
-- migration 6's. Every followupd_* function here is the daemon's only: sql/roles.sql
-- makes them SECURITY DEFINER and grants them to contactlog_daemon alone.
--
-- Mailboxes are named by their address in lower case, blanks trimmed, everywhere
-- here (outlook_watch.mailbox, the results, the arguments' matching).

-- ---------------------------------------------------------------------------
-- What the daemon watches: every mailbox that holds an item of ours (created, not
-- deleted in Outlook), while SyncFromOutlook = 1 (nothing otherwise), with its
-- stored position. A mailbox without a watch row yet has no positions and
-- resync_needed: read both folders afresh.
--
-- One index probe per mailbox (outlook_item_watch_idx), not a scan of every item.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION contactlog.followupd_watched_mailboxes()
RETURNS TABLE (mailbox text, calendar_position text, tasks_position text,
               subscription_id text, watermark text, last_change_at timestamptz,
               last_sync_at timestamptz, last_error text, last_error_at timestamptz,
               resync_needed boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
    WITH RECURSIVE boxes (mailbox) AS (
        SELECT min(lower(btrim(i.mailbox)))
        FROM contactlog.outlook_item i
        WHERE i.item_id IS NOT NULL AND NOT i.deleted_in_outlook
      UNION ALL
        SELECT (SELECT min(lower(btrim(i.mailbox)))
                FROM contactlog.outlook_item i
                WHERE i.item_id IS NOT NULL AND NOT i.deleted_in_outlook
                  AND lower(btrim(i.mailbox)) > b.mailbox)
        FROM boxes b
        WHERE b.mailbox IS NOT NULL
    )
    SELECT b.mailbox, w.calendar_position, w.tasks_position, w.subscription_id, w.watermark,
           w.last_change_at, w.last_sync_at, w.last_error, w.last_error_at,
           coalesce(w.resync_needed, true)
    FROM boxes b
    LEFT JOIN contactlog.outlook_watch w ON w.mailbox = b.mailbox
    WHERE b.mailbox IS NOT NULL AND b.mailbox <> ''
      AND (SELECT a.effective_value FROM contactlog.effective_attribute a
           WHERE a.name = 'SyncFromOutlook') = '1'
    ORDER BY b.mailbox;
$$;

-- ---------------------------------------------------------------------------
-- Stores one of a mailbox's positions, or an error, without changes to apply
-- (a sync that found nothing, a new subscription, a failed request).
--
--   position_kind  'calendar' or 'tasks' (a folder's SyncState / deltaLink),
--                  'subscription' (subscription_id) or 'watermark'; NULL: no
--                  position, only the error (or, with none, the error cleared).
--   new_position   stored as given for that kind; NULL clears it (a folder
--                  without a position is read afresh).
--   error          NULL: the request worked (the last error is cleared);
--                  otherwise recorded as last_error, with the time.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION contactlog.followupd_watch_position(mailbox text, position_kind text,
                                                               new_position text, error text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    box  constant text := lower(btrim(followupd_watch_position.mailbox));
    kind constant text := followupd_watch_position.position_kind;
    pos  constant text := followupd_watch_position.new_position;
    err  constant text := followupd_watch_position.error;
BEGIN
    IF box IS NULL OR box = '' THEN
        RAISE EXCEPTION 'the mailbox must not be empty' USING ERRCODE = '22023';
    END IF;
    IF kind IS NOT NULL AND kind NOT IN ('calendar', 'tasks', 'subscription', 'watermark') THEN
        RAISE EXCEPTION 'unknown position kind %: expected calendar, tasks, subscription or watermark',
                        quote_literal(kind)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO contactlog.outlook_watch AS w (mailbox) VALUES (box)
    ON CONFLICT (mailbox) DO NOTHING;
    UPDATE contactlog.outlook_watch w
    SET calendar_position = CASE WHEN kind = 'calendar' THEN pos ELSE w.calendar_position END,
        tasks_position    = CASE WHEN kind = 'tasks' THEN pos ELSE w.tasks_position END,
        subscription_id   = CASE WHEN kind = 'subscription' THEN pos ELSE w.subscription_id END,
        watermark         = CASE WHEN kind = 'watermark' THEN pos ELSE w.watermark END,
        last_sync_at      = CASE WHEN kind IN ('calendar', 'tasks') AND pos IS NOT NULL
                                 THEN now() ELSE w.last_sync_at END,
        -- afresh until both folders have a position; a position cleared: afresh
        resync_needed     = CASE WHEN kind IN ('calendar', 'tasks') AND pos IS NULL THEN true
                                 ELSE w.resync_needed END
                            AND (CASE WHEN kind = 'calendar' THEN pos ELSE w.calendar_position END IS NULL
                                 OR CASE WHEN kind = 'tasks' THEN pos ELSE w.tasks_position END IS NULL),
        last_error        = err,
        last_error_at     = CASE WHEN err IS NULL THEN NULL ELSE now() END
    WHERE w.mailbox = box;
END
$$;

-- ---------------------------------------------------------------------------
-- "Read this mailbox afresh": Exchange cannot resume from the stored positions
-- (ErrorInvalidSyncStateData, Graph 410 Gone). Both folder positions go, the
-- mailbox is marked resync_needed; the subscription (a hint only) is left to the
-- daemon. reason, when given, is kept as the last error.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION contactlog.followupd_watch_reset(mailbox text, reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    box constant text := lower(btrim(followupd_watch_reset.mailbox));
    why constant text := followupd_watch_reset.reason;
BEGIN
    IF box IS NULL OR box = '' THEN
        RAISE EXCEPTION 'the mailbox must not be empty' USING ERRCODE = '22023';
    END IF;
    INSERT INTO contactlog.outlook_watch AS w (mailbox, last_error, last_error_at)
    VALUES (box, why, CASE WHEN why IS NOT NULL THEN now() END)
    ON CONFLICT (mailbox) DO UPDATE
        SET calendar_position = NULL, tasks_position = NULL, resync_needed = true,
            last_error = coalesce(excluded.last_error, w.last_error),
            last_error_at = CASE WHEN excluded.last_error IS NOT NULL THEN now()
                                 ELSE w.last_error_at END;
END
$$;

-- ---------------------------------------------------------------------------
-- A task's due date moved in Outlook to new_day: the follow-up on that day at the
-- time of day it had, in time_zone (an IANA name, the employee's; NULL or unknown:
-- UTC), the zone the one-way path took the due date in (SPEC section 3). A log
-- without a follow-up gets 09:00 (a task without a time says nothing better).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION contactlog.followupd_task_due_moved(
    old_at timestamptz, new_day date, time_zone text)
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, contactlog, pg_temp AS $$
    SELECT (new_day + coalesce((old_at AT TIME ZONE z.name)::time, time '09:00'))
           AT TIME ZONE z.name
    FROM (SELECT coalesce((SELECT n.name FROM pg_timezone_names n
                           WHERE n.name = followupd_task_due_moved.time_zone),
                          'UTC') AS name) z
$$;

-- ---------------------------------------------------------------------------
-- Applies one page of changes read back from a mailbox, and stores the position
-- after that page — in one transaction, all or nothing (a crash before the commit
-- reads the same page again, and a change already recorded is not applied twice).
--
-- Change n is (kinds[n], item_ids[n], change_keys[n], whats[n], new_values[n]):
--   kind        'appointment' or 'task' (NULL: either), the item's folder
--   item_id     the item's id in Exchange (EWS ItemId / Graph id)
--   change_key  its version (EWS ChangeKey / Graph changeKey); NULL or '' when
--               Exchange names none (a deleted item)
--   what        'completed' (a task ticked off), 'moved' (an appointment's new
--               start, a task's new due date) or 'deleted'
--   new_value   'moved': the new next_contact_at, ISO 8601 with an offset (none:
--               UTC); or, for a task, its new due date 'YYYY-MM-DD': the log keeps
--               its time of day (followupd_task_due_moved). Otherwise ignored.
-- The arrays must have one element per change (else 22023, nothing done).
--
-- Returns one row per change, in order: applied, or why not. Not recorded (no
-- outlook_changes row, nothing changed; 'no change' records the change key):
--   'not ours'           no item of ours has that id in that mailbox (any more)
--   'own change'         the change key is the one followupd recorded after its
--                        own write: our change coming back (no echo)
--   'already recorded'   this item, version and kind of change was handled before
--                        (a page read twice), or the item is already deleted
--   'no change'          the log already says so (moved to its own time,
--                        completed when it is completed)
--   'in flight'          a pass over the log is under way (a claim stands): the
--                        change may be that pass's own write, whose key is not
--                        recorded yet. The position is then NOT stored: the caller
--                        reads the page again once the pass is over.
--   'SyncFromOutlook = 0: ...', 'unknown change ...'
-- Recorded (a row of contactlog.outlook_changes), each as the employee whose
-- address is the mailbox (case-insensitive, trimmed):
--   applied       'completed' as contactlog.complete; 'moved' sets next_contact_at
--                 (only the owner of an in-progress log may); both through the
--                 log's normal outbox trigger, so the other item follows. 'deleted'
--                 leaves the log as it is and flags the item deleted_in_outlook.
--   refused       the reason: refuse()'s wording ("contact log 7 is locked by Bob
--                 Baker (bob)", "... is completed", "... is open (locked by
--                 nobody)"), an inactive or unknown employee, a value that is no
--                 date and time, or 'changed in the CRM meanwhile' (the conflict
--                 rule below). The log is not changed; it gets a forced pass (as
--                 followupctl resync, deleted items left deleted), so the one-way
--                 path puts Outlook back.
-- Either way the item's recorded change key becomes the one read, so the change
-- is not seen as one again.
--
-- Conflict rule (docs/architecture.md): the CRM's committed state wins unless the
-- Outlook change was applied first. A log whose outbox holds a version the daemon
-- has not synced yet (outlook_sync.version > outlook_queue.synced_version) has a
-- CRM change not yet in Outlook; an Outlook change to it is refused. A version
-- this function made itself (an earlier change of the same page or an earlier
-- page, applied or refused) is not a CRM change: it carries the CRM version that
-- was pending when it was made (outlook_change_log.crm_version). Deletions are
-- judged the same way.
--
-- position_kind 'calendar' or 'tasks' and new_position (NULL: none stored) are the
-- folder position after this page; stored last, in the same transaction; a stored
-- position clears the mailbox's last error.
--
-- Locks, in the order every writer of a log takes them: the log's row, then its
-- item, then its outbox row. Changes are applied in the order given.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION contactlog.followupd_apply_outlook_changes(
    mailbox text, kinds text[], item_ids text[], change_keys text[], whats text[],
    new_values text[], position_kind text, new_position text)
RETURNS TABLE (item_id text, applied boolean, reason text)
LANGUAGE plpgsql SECURITY DEFINER
-- a new_value without an offset is UTC, whoever calls
SET TimeZone = 'UTC'
SET search_path = pg_catalog, contactlog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    box       constant text := lower(btrim(followupd_apply_outlook_changes.mailbox));
    n         constant integer := coalesce(cardinality(item_ids), 0);
    sync_on   constant boolean :=
        (SELECT a.effective_value FROM contactlog.effective_attribute a
         WHERE a.name = 'SyncFromOutlook') = '1';
    emp_id    bigint;          -- the mailbox's employee
    emp_problem text;          -- why nobody acts for the mailbox
    recorded  integer := 0;    -- changes recorded in this call
    c_kind    text;
    c_key     text;
    c_what    text;
    c_new     text;
    stored_key text;
    log_id    bigint;
    item      contactlog.outlook_item;
    target    contactlog.contact_log;
    actor     contactlog.employee;
    new_at    timestamptz;
    old_v     text;
    new_v     text;
    problem   text;
    no_change boolean;
    outbox_v  bigint;
    synced_v  bigint;
    last_own  record;
    crm_v     bigint;
    still_deleted text[];
    -- item id / change key of the changes of this call past the echo check: one edit
    -- read as two changes (a task moved and ticked off) shares one key, and the
    -- first may record it ('no change') before the second is looked at.
    keys_seen text[] := '{}';
    in_flight integer := 0;    -- changes put off: a pass over their log is under way
BEGIN
    IF box IS NULL OR box = '' THEN
        RAISE EXCEPTION 'the mailbox must not be empty' USING ERRCODE = '22023';
    END IF;
    IF coalesce(cardinality(kinds), 0) <> n OR coalesce(cardinality(change_keys), 0) <> n
       OR coalesce(cardinality(whats), 0) <> n OR coalesce(cardinality(new_values), 0) <> n THEN
        RAISE EXCEPTION 'the changes'' arrays differ in length (kinds %, item_ids %, change_keys %, '
                        'whats %, new_values %)',
                        coalesce(cardinality(kinds), 0), n, coalesce(cardinality(change_keys), 0),
                        coalesce(cardinality(whats), 0), coalesce(cardinality(new_values), 0)
            USING ERRCODE = '22023';
    END IF;
    IF position_kind IS NOT NULL AND position_kind NOT IN ('calendar', 'tasks') THEN
        RAISE EXCEPTION 'unknown position kind %: expected calendar or tasks',
                        quote_literal(position_kind)
            USING ERRCODE = '22023';
    END IF;

    -- Who acts for the mailbox: the employee with that address; an active one
    -- before an inactive one (who is refused as inactive); two active ones with
    -- one address act for nobody.
    SELECT e.id INTO emp_id
    FROM contactlog.employee e
    WHERE lower(btrim(e.email)) = box
    ORDER BY e.active DESC, e.id
    LIMIT 1;
    IF emp_id IS NULL THEN
        emp_problem := format('no employee has the mailbox %s', box);
    ELSIF (SELECT count(*) FROM contactlog.employee e
           WHERE lower(btrim(e.email)) = box AND e.active) > 1 THEN
        emp_problem := format('the mailbox %s belongs to more than one active employee', box);
        emp_id := NULL;
    END IF;

    FOR i IN 1 .. n LOOP
        item_id := item_ids[i];
        applied := false;
        reason := NULL;
        c_kind := kinds[i];
        c_key := nullif(change_keys[i], '');
        c_what := whats[i];
        c_new := new_values[i];

        IF c_what IS NULL OR c_what NOT IN ('completed', 'moved', 'deleted') THEN
            reason := format('unknown change %s: expected completed, moved or deleted',
                             coalesce(quote_literal(c_what), 'NULL'));
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF NOT sync_on THEN
            reason := 'SyncFromOutlook = 0: Outlook is a mirror only';
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- The item, and its log: the log's row locked first (as the CRM's own
        -- writers do), then the item's, read again under the lock.
        SELECT i2.contact_log_id INTO log_id
        FROM contactlog.outlook_item i2
        WHERE i2.item_id = item_ids[i] AND lower(btrim(i2.mailbox)) = box
          AND (c_kind IS NULL OR i2.kind = c_kind)
        LIMIT 1;
        IF log_id IS NULL OR item_ids[i] IS NULL THEN
            reason := 'not ours';
            RETURN NEXT;
            CONTINUE;
        END IF;
        target := NULL;
        SELECT * INTO target FROM contactlog.contact_log l WHERE l.id = log_id FOR UPDATE;
        item := NULL;
        SELECT * INTO item
        FROM contactlog.outlook_item i2
        WHERE i2.contact_log_id = log_id AND i2.item_id = item_ids[i]
          AND lower(btrim(i2.mailbox)) = box AND (c_kind IS NULL OR i2.kind = c_kind)
        FOR UPDATE;
        IF item.contact_log_id IS NULL THEN   -- forgotten meanwhile
            reason := 'not ours';
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- A deletion comes without a key: it is the deletion of the last version
        -- we knew.
        stored_key := CASE WHEN c_what = 'deleted' THEN coalesce(c_key, item.change_key, '')
                           ELSE coalesce(c_key, '') END;
        IF EXISTS (SELECT 1 FROM contactlog.outlook_change_log c
                   WHERE c.item_id = item.item_id AND c.change_key = stored_key
                     AND c.what = c_what)
           OR (c_what = 'deleted' AND item.deleted_in_outlook) THEN
            reason := 'already recorded';
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- The key we recorded after our own write, and not one recorded from a
        -- change read back (one edit may be two changes: moved and completed).
        IF c_what <> 'deleted' AND c_key IS NOT NULL AND c_key = item.change_key
           AND NOT (item.item_id || '/' || c_key = ANY (keys_seen))
           AND NOT EXISTS (SELECT 1 FROM contactlog.outlook_change_log c
                           WHERE c.item_id = item.item_id AND c.change_key = c_key) THEN
            reason := 'own change';
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- A pass over the log is under way: what is read may be its own write, whose
        -- change key is recorded only when the pass ends. Put off (not recorded, and
        -- the position not stored, so the page is read again after the pass).
        IF EXISTS (SELECT 1 FROM contactlog.outlook_queue q
                   WHERE q.contact_log_id = log_id AND q.claimed_until IS NOT NULL) THEN
            in_flight := in_flight + 1;
            reason := 'in flight';
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF c_key IS NOT NULL THEN
            keys_seen := keys_seen || (item.item_id || '/' || c_key);
        END IF;

        -- What the change means for the log.
        problem := NULL;
        no_change := false;
        old_v := NULL;
        new_v := NULL;
        new_at := NULL;
        IF c_what = 'completed' THEN
            old_v := target.status;
            new_v := 'completed';
            no_change := target.status = 'completed';
        ELSIF c_what = 'moved' THEN
            BEGIN
                IF c_new ~ '^\d{4}-\d{2}-\d{2}$' THEN
                    -- A task's new due date: the log keeps its time of day in the
                    -- zone the due date was written in (the mailbox's employee's).
                    new_at := contactlog.followupd_task_due_moved(
                        target.next_contact_at, c_new::date,
                        (SELECT e.time_zone FROM contactlog.employee e WHERE e.id = emp_id));
                ELSE
                    new_at := c_new::timestamptz;
                END IF;
            EXCEPTION WHEN data_exception THEN
                new_at := NULL;
            END;
            IF new_at IS NULL OR NOT isfinite(new_at) THEN
                problem := format('%s is not a date and time', coalesce(quote_literal(c_new), 'NULL'));
                new_v := c_new;
            ELSE
                new_v := to_char(new_at, 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
            END IF;
            old_v := to_char(target.next_contact_at, 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
            no_change := problem IS NULL AND target.next_contact_at = new_at;
        END IF;

        IF no_change THEN
            UPDATE contactlog.outlook_item i2
            SET change_key = coalesce(c_key, i2.change_key), deleted_in_outlook = false,
                updated_at = now()
            WHERE i2.contact_log_id = item.contact_log_id AND i2.kind = item.kind;
            reason := 'no change';
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- May the mailbox's employee make it? (A deletion changes no log.)
        IF problem IS NULL AND c_what <> 'deleted' THEN
            IF target.id IS NULL THEN
                problem := format('contact log %s does not exist', log_id);
            ELSIF emp_problem IS NOT NULL THEN
                problem := emp_problem;
            ELSE
                BEGIN
                    actor := contactlog.acting_employee(emp_id);
                    IF NOT (target.status = 'in_progress' AND target.owner_id = actor.id) THEN
                        PERFORM contactlog.refuse(target, actor,
                                                  CASE c_what WHEN 'completed' THEN 'complete'
                                                              ELSE 'move' END);
                    END IF;
                EXCEPTION WHEN insufficient_privilege OR no_data_found OR invalid_parameter_value THEN
                    problem := SQLERRM;
                END;
            END IF;
        END IF;

        -- The conflict rule: a CRM version not yet in Outlook wins.
        outbox_v := NULL;
        crm_v := NULL;
        IF target.id IS NOT NULL THEN
            SELECT s.version INTO outbox_v
            FROM contactlog.outlook_sync s WHERE s.contact_log_id = log_id
            FOR UPDATE;
            IF outbox_v IS NOT NULL THEN
                SELECT c.outbox_version, c.crm_version INTO last_own
                FROM contactlog.outlook_change_log c
                WHERE c.contact_log_id = log_id AND c.outbox_version IS NOT NULL
                ORDER BY c.id DESC
                LIMIT 1;
                crm_v := CASE WHEN last_own.outbox_version = outbox_v THEN last_own.crm_version
                              ELSE outbox_v END;
                synced_v := coalesce((SELECT q.synced_version FROM contactlog.outlook_queue q
                                      WHERE q.contact_log_id = log_id), 0);
                IF crm_v <= synced_v THEN
                    crm_v := NULL;
                END IF;
            END IF;
            IF problem IS NULL AND crm_v IS NOT NULL THEN
                problem := 'changed in the CRM meanwhile';
            END IF;
        END IF;

        IF problem IS NOT NULL THEN
            -- Refused: the log stays; a forced pass puts Outlook back.
            PERFORM contactlog.followupd_bump(log_id, true);
        ELSIF c_what = 'completed' THEN
            -- Applied, as the employee.
            PERFORM contactlog.complete(log_id, emp_id);
        ELSIF c_what = 'moved' THEN
            -- The trigger brings back items deleted in Outlook on a new date; a
            -- date from Outlook is not the CRM's, so they stay deleted.
            still_deleted := ARRAY(SELECT i2.kind FROM contactlog.outlook_item i2
                                   WHERE i2.contact_log_id = log_id AND i2.deleted_in_outlook
                                     AND i2.kind <> item.kind);
            UPDATE contactlog.contact_log l SET next_contact_at = new_at WHERE l.id = log_id;
            UPDATE contactlog.outlook_item i2 SET deleted_in_outlook = true
            WHERE i2.contact_log_id = log_id AND i2.kind = ANY (still_deleted);
        END IF;
        UPDATE contactlog.outlook_item i2
        SET change_key = coalesce(c_key, i2.change_key),
            -- an applied deletion marks the item; a refused change shows it exists
            deleted_in_outlook = CASE WHEN problem IS NULL THEN c_what = 'deleted'
                                      ELSE i2.deleted_in_outlook AND c_what = 'deleted' END,
            updated_at = now()
        WHERE i2.contact_log_id = item.contact_log_id AND i2.kind = item.kind;
        INSERT INTO contactlog.outlook_change_log AS c
               (contact_log_id, employee_id, mailbox, kind, item_id, change_key, what,
                old_value, new_value, applied, reason, outbox_version, crm_version)
        VALUES (log_id, emp_id, box, item.kind, item.item_id, stored_key, c_what,
                old_v, new_v, problem IS NULL, problem,
                CASE WHEN problem IS NOT NULL OR c_what <> 'deleted'
                     THEN (SELECT s.version FROM contactlog.outlook_sync s
                           WHERE s.contact_log_id = log_id) END,
                crm_v)
        ON CONFLICT ON CONSTRAINT outlook_change_log_once DO NOTHING;
        recorded := recorded + 1;
        applied := problem IS NULL;
        reason := problem;
        RETURN NEXT;
    END LOOP;

    -- The position after this page, last: the changes and it commit together; not
    -- while a change of the page was put off (the page is to be read again).
    IF in_flight > 0 THEN
        new_position := NULL;
    END IF;
    IF (position_kind IS NOT NULL AND new_position IS NOT NULL) OR recorded > 0 THEN
        INSERT INTO contactlog.outlook_watch AS w (mailbox) VALUES (box)
        ON CONFLICT (mailbox) DO NOTHING;
        UPDATE contactlog.outlook_watch w
        SET last_change_at = CASE WHEN recorded > 0 THEN now() ELSE w.last_change_at END
        WHERE w.mailbox = box;
        IF position_kind IS NOT NULL AND new_position IS NOT NULL THEN
            PERFORM contactlog.followupd_watch_position(box, position_kind, new_position, NULL);
        END IF;
    END IF;
    RETURN;
END
$$;

-- ---------------------------------------------------------------------------
-- A folder read afresh (its position was lost) shows what is there, not what
-- went: every item of ours of that kind in that mailbox that the whole read did
-- not see was deleted meanwhile, and is judged as a 'deleted' change (as
-- followupd_apply_outlook_changes, same rules and rows). Only items recorded
-- before the read started (read_started_at, the database's clock): one created
-- or moved by a pass during the read was not there to be seen.
-- A read of a window only (Graph's calendarView delta: window_from, window_to)
-- lists the items whose time lies in it: only items whose log's follow-up lies
-- inside it, a day clear of either end, are judged; the others say nothing.
-- ---------------------------------------------------------------------------
DROP FUNCTION IF EXISTS contactlog.followupd_apply_outlook_absent(text, text, text[],
                                                                  timestamptz);
CREATE OR REPLACE FUNCTION contactlog.followupd_apply_outlook_absent(
    mailbox text, kind text, seen_item_ids text[], read_started_at timestamptz,
    window_from timestamptz DEFAULT NULL, window_to timestamptz DEFAULT NULL)
RETURNS TABLE (item_id text, applied boolean, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, contactlog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    box  constant text := lower(btrim(followupd_apply_outlook_absent.mailbox));
    gone text[];
    n    integer;
BEGIN
    IF followupd_apply_outlook_absent.kind IS NULL
       OR followupd_apply_outlook_absent.kind NOT IN ('appointment', 'task') THEN
        RAISE EXCEPTION 'unknown kind %: expected appointment or task',
                        coalesce(quote_literal(followupd_apply_outlook_absent.kind), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF read_started_at IS NULL THEN
        RAISE EXCEPTION 'read_started_at must be given' USING ERRCODE = '22023';
    END IF;
    IF (followupd_apply_outlook_absent.window_from IS NULL)
       <> (followupd_apply_outlook_absent.window_to IS NULL) THEN
        RAISE EXCEPTION 'window_from and window_to: both or neither' USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(i.item_id ORDER BY i.item_id) INTO gone
    FROM contactlog.outlook_item i
    WHERE lower(btrim(i.mailbox)) = box AND i.kind = followupd_apply_outlook_absent.kind
      AND i.item_id IS NOT NULL AND NOT i.deleted_in_outlook
      AND i.updated_at < read_started_at
      AND i.item_id <> ALL (coalesce(seen_item_ids, '{}'::text[]))
      AND (followupd_apply_outlook_absent.window_to IS NULL OR EXISTS (
               SELECT 1 FROM contactlog.contact_log l
               WHERE l.id = i.contact_log_id
                 AND l.next_contact_at >= followupd_apply_outlook_absent.window_from
                                          + interval '1 day'
                 AND l.next_contact_at < followupd_apply_outlook_absent.window_to
                                         - interval '1 day'));
    n := coalesce(cardinality(gone), 0);
    IF n = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT r.item_id, r.applied, r.reason
    FROM contactlog.followupd_apply_outlook_changes(
        box, array_fill(followupd_apply_outlook_absent.kind, ARRAY[n]), gone,
        array_fill(NULL::text, ARRAY[n]), array_fill('deleted'::text, ARRAY[n]),
        array_fill(NULL::text, ARRAY[n]), NULL, NULL) r;
END
$$;

-- ---------------------------------------------------------------------------
-- Every change that flowed back from Outlook, applied or refused (SPEC §7), for
-- the front end and the administrator: the log, the employee whose mailbox it came
-- from, what (completed / moved / deleted), the old and new value (moved: times
-- in UTC, ISO 8601; completed: the status), applied, the reason when refused, and
-- when. Read by staff, app, the attributes' administrators and the daemon (grants:
-- sql/roles.sql).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW contactlog.outlook_changes AS
SELECT c.id, c.contact_log_id, c.employee_id, e.display_name AS employee_name,
       c.mailbox, c.kind, c.what, c.old_value, c.new_value, c.applied, c.reason, c.at
FROM contactlog.outlook_change_log c
LEFT JOIN contactlog.employee e ON e.id = c.employee_id;
