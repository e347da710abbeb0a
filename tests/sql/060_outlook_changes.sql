-- Outlook → CRM (issue 17, SPEC §7): what the daemon watches, and changes read
-- back from Outlook applied through followupd_apply_outlook_changes as the
-- mailbox's employee under the ownership rules — applied, refused (Outlook put
-- back by a forced pass), echoes and pages read twice skipped, deletions
-- remembered, the conflict rule, the position stored with the page (all or
-- nothing), and who may call and read what.
BEGIN;
SELECT plan(115);

-- The outbox version of a log (0: none), and whether a forced pass is queued.
CREATE FUNCTION pg_temp.version_of(log_id bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce((SELECT version FROM contactlog.outlook_sync WHERE contact_log_id = log_id), 0);
$$;
CREATE FUNCTION pg_temp.forced(log_id bigint) RETURNS boolean LANGUAGE sql AS $$
    SELECT coalesce((SELECT s.resync_version > coalesce(q.synced_version, 0)
                     FROM contactlog.outlook_sync s
                     LEFT JOIN contactlog.outlook_queue q USING (contact_log_id)
                     WHERE s.contact_log_id = log_id), false);
$$;
-- One change from alice's mailbox; 'item applied reason' per change.
CREATE FUNCTION pg_temp.apply(kinds text[], item_ids text[], change_keys text[], whats text[],
                              new_values text[], position_kind text DEFAULT NULL,
                              new_position text DEFAULT NULL, box text DEFAULT 'alice@example.org')
RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(r.item_id || ' ' || r.applied || ' ' || coalesce(r.reason, '-'))
    FROM contactlog.followupd_apply_outlook_changes(box, kinds, item_ids, change_keys, whats,
                                                    new_values, position_kind, new_position) r;
$$;
CREATE FUNCTION pg_temp.log_state(log_id bigint) RETURNS text LANGUAGE sql AS $$
    SELECT status || '/' || coalesce(owner_id::text, '-') || '/'
           || coalesce(to_char(next_contact_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), '-')
    FROM contactlog.contact_log WHERE id = log_id;
$$;
CREATE FUNCTION pg_temp.changes(log_id bigint) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(c.what || ' ' || c.applied || ' ' || coalesce(c.old_value, '-') || ' '
                              || coalesce(c.new_value, '-') || ' ' || coalesce(c.reason, '-')
                              ORDER BY c.id), '{}')
    FROM contactlog.outlook_changes c WHERE c.contact_log_id = log_id;
$$;

-- ---- people, logs, items ---------------------------------------------------------
SET LOCAL contactlog.actor = '';
INSERT INTO contactlog.employee (id, login, display_name, email, role, active) VALUES
    (601, 'o_alice', 'Alice Archer', ' Alice@Example.org ', 'staff', true),
    (602, 'o_bob',   'Bob Baker',    'bob@example.org',     'staff', true),
    (603, 'o_ed',    'Ed Gone',      'ed@example.org',      'staff', false);
INSERT INTO contactlog.contact_log (id, created_by, contact_name, status, owner_id, reason, next_contact_at)
VALUES (1701, 601, 'Completed',  'in_progress', 601, 'r', '2030-01-01 09:00+00'),
       (1702, 601, 'Moved',      'in_progress', 601, 'r', '2030-01-02 09:00+00'),
       (1703, 601, 'Not hers',   'in_progress', 602, 'r', '2030-01-03 09:00+00'),
       (1704, 601, 'Echo',       'in_progress', 601, 'r', '2030-01-04 09:00+00'),
       (1705, 601, 'Deleted',    'in_progress', 601, 'r', '2030-01-05 09:00+00'),
       (1706, 601, 'Conflict',   'in_progress', 601, 'r', '2030-01-06 09:00+00'),
       (1707, 601, 'Twice',      'in_progress', 601, 'r', '2030-01-07 09:00+00'),
       (1708, 601, 'One edit',   'in_progress', 601, 'r', '2030-01-08 09:00+00'),
       (1709, 601, 'Bad date',   'in_progress', 601, 'r', '2030-01-09 09:00+00'),
       (1710, 601, 'Completed!', 'completed',   NULL, 'r', '2030-01-10 09:00+00'),
       (1711, 603, 'Ed''s',      'in_progress', 603, 'r', '2030-01-11 09:00+00'),
       (1712, 601, 'By daemon',  'in_progress', 601, 'r', '2030-01-12 09:00+00'),
       (1713, 602, 'Bob''s',     'in_progress', 602, 'r', '2030-01-13 09:00+00'),
       (1714, 601, 'Due day',    'in_progress', 601, 'r', '2030-01-14 09:00+00'),
       (1715, 601, 'In flight',  'in_progress', 601, 'r', '2030-01-15 09:00+00'),
       (1716, 601, 'Gone',       'in_progress', 601, 'r', '2030-01-16 09:00+00');
INSERT INTO contactlog.outlook_item (contact_log_id, kind, mailbox, item_id, change_key)
SELECT l.id, k.kind, CASE l.created_by WHEN 601 THEN 'alice@example.org'
                                       WHEN 602 THEN 'bob@example.org' ELSE 'ed@example.org' END,
       CASE k.kind WHEN 'appointment' THEN 'A' ELSE 'T' END || l.id, 'k0'
FROM contactlog.contact_log l
CROSS JOIN (VALUES ('appointment'), ('task')) k(kind)
WHERE l.id BETWEEN 1701 AND 1716;
-- Everything is in Outlook: the daemon synced it all (synced outbox rows leave).
DELETE FROM contactlog.outlook_sync WHERE contact_log_id BETWEEN 1701 AND 1716;

SELECT has_function('contactlog', 'followupd_apply_outlook_changes',
                    ARRAY['text', 'text[]', 'text[]', 'text[]', 'text[]', 'text[]', 'text', 'text'],
                    'followupd_apply_outlook_changes(mailbox, kinds, item_ids, change_keys, whats, new_values, position_kind, new_position)');
SELECT has_function('contactlog', 'followupd_watched_mailboxes', ARRAY[]::text[],
                    'followupd_watched_mailboxes()');
SELECT has_function('contactlog', 'followupd_watch_position', ARRAY['text', 'text', 'text', 'text'],
                    'followupd_watch_position(mailbox, position_kind, new_position, error)');
SELECT has_function('contactlog', 'followupd_watch_reset', ARRAY['text', 'text'],
                    'followupd_watch_reset(mailbox, reason)');
SELECT has_view('contactlog', 'outlook_changes', 'view contactlog.outlook_changes');
SELECT has_column('contactlog', 'outlook_item', 'deleted_in_outlook', 'outlook_item.deleted_in_outlook');

-- ---- SyncFromOutlook = 0 (the default): Outlook is a mirror only -------------------
SELECT is((SELECT effective_value FROM contactlog.effective_attribute WHERE name = 'SyncFromOutlook'),
          '0', 'SyncFromOutlook defaults to 0');
SELECT is((SELECT count(*)::int FROM contactlog.followupd_watched_mailboxes()), 0,
          'SyncFromOutlook = 0: no mailbox is watched');
SELECT is(pg_temp.apply('{task}', '{T1701}', '{k1}', '{completed}', '{NULL}'),
          ARRAY['T1701 false SyncFromOutlook = 0: Outlook is a mirror only'],
          'SyncFromOutlook = 0: a change read back is not applied');
SELECT is(pg_temp.log_state(1701), 'in_progress/601/2030-01-01 09:00',
          'SyncFromOutlook = 0: the log is unchanged');
SELECT is((SELECT count(*)::int FROM contactlog.outlook_changes), 0,
          'SyncFromOutlook = 0: nothing recorded');

INSERT INTO contactlog.attribute (name, value) VALUES ('SyncFromOutlook', '1');

-- ---- what is watched ------------------------------------------------------------------
SELECT is(ARRAY(SELECT mailbox || ' ' || coalesce(calendar_position, '-') || ' ' || resync_needed
                FROM contactlog.followupd_watched_mailboxes()),
          ARRAY['alice@example.org - true', 'bob@example.org - true', 'ed@example.org - true'],
          'the mailboxes holding our items are watched, each read afresh at first');
INSERT INTO contactlog.outlook_item (contact_log_id, kind, mailbox) VALUES (1799, 'task', 'pending@example.org');
SELECT ok(NOT EXISTS (SELECT 1 FROM contactlog.followupd_watched_mailboxes()
                      WHERE mailbox = 'pending@example.org'),
          'a mailbox with only a create in flight (no item id) is not watched');

-- ---- completed by the owner -------------------------------------------------------------
SELECT pg_temp.version_of(1701) AS v \gset
SELECT is(pg_temp.apply('{task}', '{T1701}', '{k1}', '{completed}', '{NULL}', 'tasks', 'S1'),
          ARRAY['T1701 true -'], 'completed by the owner: applied');
SELECT is(pg_temp.log_state(1701), 'completed/-/2030-01-01 09:00', 'completed by the owner: the log is completed');
SELECT is(pg_temp.changes(1701), ARRAY['completed true in_progress completed -'],
          'completed by the owner: one outlook_changes row, applied');
SELECT is((SELECT employee_id || ' ' || employee_name || ' ' || mailbox || ' ' || kind
           FROM contactlog.outlook_changes WHERE contact_log_id = 1701),
          '601 Alice Archer alice@example.org task',
          'the row names the employee whose mailbox it came from (address matched case-insensitively, trimmed)');
SELECT cmp_ok(pg_temp.version_of(1701), '>', :v::bigint,
              'completed: the log is queued by its outbox trigger (the one-way path follows)');
SELECT is((SELECT change_key FROM contactlog.outlook_item WHERE item_id = 'T1701'), 'k1',
          'completed: the item''s new change key is recorded');
SELECT is((SELECT tasks_position || ' ' || coalesce(calendar_position, '-') || ' ' || resync_needed
           FROM contactlog.outlook_watch WHERE mailbox = 'alice@example.org'),
          'S1 - true', 'the tasks position is stored with the page (calendar still to be read afresh)');

-- ---- moved by the owner ---------------------------------------------------------------------
SELECT pg_temp.version_of(1702) AS v \gset
SELECT is(pg_temp.apply('{appointment}', '{A1702}', '{k1}', '{moved}', '{2030-02-03T10:30:00+01:00}',
                        'calendar', 'C1'),
          ARRAY['A1702 true -'], 'moved by the owner: applied');
SELECT is(pg_temp.log_state(1702), 'in_progress/601/2030-02-03 09:30', 'moved: next_contact_at is the new time');
SELECT cmp_ok(pg_temp.version_of(1702), '>', :v::bigint,
              'moved: the outbox version grows (the task''s due date follows)');
SELECT is(pg_temp.changes(1702), ARRAY['moved true 2030-01-02T09:00:00Z 2030-02-03T09:30:00Z -'],
          'moved: the row holds the old and the new time (UTC)');
SELECT is((SELECT calendar_position || ' ' || tasks_position || ' ' || resync_needed
           FROM contactlog.outlook_watch WHERE mailbox = 'alice@example.org'),
          'C1 S1 false', 'both folders have a position: nothing left to read afresh');
SELECT ok((SELECT last_change_at IS NOT NULL AND last_sync_at IS NOT NULL
           FROM contactlog.outlook_watch WHERE mailbox = 'alice@example.org'),
          'the watch row tells when the last change and the last sync were');

-- A task's due date and a task change key "a1" with the date unchanged: nothing to do.
SELECT is(pg_temp.apply('{task}', '{T1702}', '{k1}', '{moved}', '{2030-02-03 09:30+00}'),
          ARRAY['T1702 false no change'], 'moved to the time the log already has: no change, not recorded');

-- A task's new due date as a date (what the daemon sends): the log keeps its time of day
-- in the mailbox's employee's zone (Alice: none, so UTC).
SELECT is(pg_temp.apply('{task}', '{T1702}', '{k1b}', '{moved}', '{2030-02-03}'),
          ARRAY['T1702 false no change'], 'a task due on the day it is due: no change');
SELECT is(pg_temp.apply('{task}', '{T1702}', '{k2}', '{moved}', '{2030-02-10}'),
          ARRAY['T1702 true -'], 'a task moved to another day: applied');
SELECT is(pg_temp.log_state(1702), 'in_progress/601/2030-02-10 09:30',
          'a task moved: the new day, the old time of day');
SELECT is(contactlog.followupd_task_due_moved('2030-01-02 08:30+00', '2030-03-05', 'Europe/Berlin'),
          '2030-03-05 08:30+00'::timestamptz, 'the time of day is kept in the employee''s zone (09:30 CET)');
SELECT is(contactlog.followupd_task_due_moved('2030-01-02 08:30+00', '2030-07-01', 'Europe/Berlin'),
          '2030-07-01 07:30+00'::timestamptz, '... across a change to summer time (09:30 CEST)');
SELECT is(contactlog.followupd_task_due_moved('2030-01-02 23:30+00', '2030-01-09', 'America/New_York'),
          '2030-01-09 23:30+00'::timestamptz, '... west of UTC (18:30 EST)');
SELECT is(contactlog.followupd_task_due_moved('2030-01-02 08:30+00', '2030-03-05', 'Mars/Olympus'),
          '2030-03-05 08:30+00'::timestamptz, 'an unknown zone: UTC');
SELECT is(contactlog.followupd_task_due_moved(NULL, '2030-03-05', NULL),
          '2030-03-05 09:00+00'::timestamptz, 'no follow-up time: 09:00');

-- One edit read as two changes where the first is no change (a task ticked off on the
-- day it is due): the second is not taken for our own echo.
SELECT is(pg_temp.apply('{task,task}', '{T1714,T1714}', '{k7,k7}', '{moved,completed}',
                        '{2030-01-14,NULL}'),
          ARRAY['T1714 false no change', 'T1714 true -'],
          'ticked off on its due day: moved is no change, completed is applied');
SELECT is(pg_temp.log_state(1714), 'completed/-/2030-01-14 09:00', '... and the log is completed');

-- A pass over the log under way (its claim stands): what is read may be that pass's own
-- write, whose key is recorded only when it ends. Put off, and the position kept, so the
-- page is read again.
INSERT INTO contactlog.outlook_queue (contact_log_id, claimed_until, claim_token, claimed_by)
VALUES (1715, now() + interval '1 minute', 77, 'test')
ON CONFLICT (contact_log_id) DO UPDATE
SET claimed_until = excluded.claimed_until, claim_token = 77, claimed_by = 'test';
SELECT is(pg_temp.apply('{appointment}', '{A1715}', '{k1}', '{moved}', '{2030-02-15T09:00:00Z}',
                        'calendar', 'C-after-flight'),
          ARRAY['A1715 false in flight'], 'a change to a log with a pass under way: put off');
SELECT is(pg_temp.log_state(1715), 'in_progress/601/2030-01-15 09:00', '... the log unchanged');
SELECT isnt((SELECT calendar_position FROM contactlog.outlook_watch
             WHERE mailbox = 'alice@example.org'), 'C-after-flight',
            '... and the position not stored: the page is read again');
UPDATE contactlog.outlook_queue SET claimed_until = NULL, claim_token = NULL, claimed_by = NULL
WHERE contact_log_id = 1715;
SELECT is(pg_temp.apply('{appointment}', '{A1715}', '{k1}', '{moved}', '{2030-02-15T09:00:00Z}',
                        'calendar', 'C-after-flight'),
          ARRAY['A1715 true -'], 'read again after the pass: applied');

-- A folder read afresh: an item of ours it did not see went meanwhile ...
UPDATE contactlog.outlook_item SET updated_at = now() - interval '1 day'
WHERE contact_log_id = 1716;
-- ... unless the read was of a window (Graph's calendarView) the follow-up does not lie
-- in, a day clear of its ends: such a read says nothing of it.
SELECT is(ARRAY(SELECT r.item_id FROM contactlog.followupd_apply_outlook_absent(
                    'alice@example.org', 'appointment',
                    ARRAY(SELECT i.item_id FROM contactlog.outlook_item i
                          WHERE i.kind = 'appointment' AND i.item_id <> 'A1716'), now(),
                    '2030-01-15 12:00+00', '2031-01-01 00:00+00') r),
          '{}'::text[], 'a window read: an item whose follow-up lies near its start is not judged');
SELECT is(ARRAY(SELECT r.item_id FROM contactlog.followupd_apply_outlook_absent(
                    'alice@example.org', 'appointment',
                    ARRAY(SELECT i.item_id FROM contactlog.outlook_item i
                          WHERE i.kind = 'appointment' AND i.item_id <> 'A1716'), now(),
                    '2029-01-01 00:00+00', '2030-01-17 00:00+00') r),
          '{}'::text[], '... nor one whose follow-up lies near its end');
SELECT throws_ok($$SELECT * FROM contactlog.followupd_apply_outlook_absent('alice@example.org',
                   'task', '{}', now(), now(), NULL)$$, '22023', NULL,
                 'a window needs both ends');
SELECT is(ARRAY(SELECT r.item_id || ' ' || r.applied || ' ' || coalesce(r.reason, '-')
                FROM contactlog.followupd_apply_outlook_absent(
                    'Alice@Example.org', 'appointment',
                    ARRAY(SELECT i.item_id FROM contactlog.outlook_item i
                          WHERE i.kind = 'appointment' AND i.item_id <> 'A1716'), now(),
                    '2029-12-01 00:00+00', '2031-01-01 00:00+00') r),
          ARRAY['A1716 true -'], 'read afresh (a window it lies in): an item not seen is '
                                 'judged deleted');
SELECT is((SELECT deleted_in_outlook FROM contactlog.outlook_item
           WHERE contact_log_id = 1716 AND kind = 'appointment'), true, '... and flagged');
-- ... but not one recorded after the read started (a pass created or moved it meanwhile).
SELECT is(ARRAY(SELECT r.item_id FROM contactlog.followupd_apply_outlook_absent(
                    'alice@example.org', 'task', '{}', now() - interval '2 days') r),
          '{}'::text[], 'items recorded after the read started are not judged');
SELECT throws_ok($$SELECT * FROM contactlog.followupd_apply_outlook_absent('alice@example.org',
                   'note', '{}', now())$$, '22023', NULL, 'an unknown kind is refused');

-- ---- refused: not the owner -----------------------------------------------------------------
SELECT pg_temp.version_of(1703) AS v \gset
SELECT is(pg_temp.apply('{task}', '{T1703}', '{k1}', '{completed}', '{NULL}'),
          ARRAY['T1703 false contact log 1703 is locked by Bob Baker (o_bob)'],
          'completed by a non-owner: refused with the ownership rule''s wording');
SELECT is(pg_temp.log_state(1703), 'in_progress/602/2030-01-03 09:00', 'refused: the log is unchanged');
SELECT is(pg_temp.changes(1703),
          ARRAY['completed false in_progress completed contact log 1703 is locked by Bob Baker (o_bob)'],
          'refused: recorded with the reason');
SELECT ok(pg_temp.forced(1703), 'refused: a forced pass is queued (Outlook is put back)');
SELECT is(pg_temp.apply('{appointment}', '{A1703}', '{k1}', '{moved}', '{2030-03-01T09:00:00Z}'),
          ARRAY['A1703 false contact log 1703 is locked by Bob Baker (o_bob)'],
          'moved by a non-owner: refused');
SELECT is(pg_temp.apply('{appointment}', '{A1710}', '{k1}', '{moved}', '{2030-03-01T09:00:00Z}'),
          ARRAY['A1710 false contact log 1710 is completed'], 'moved on a completed log: refused');
SELECT is(pg_temp.apply('{task}', '{T1710}', '{k1}', '{completed}', '{NULL}'),
          ARRAY['T1710 false no change'], 'a completed log''s task ticked off: no change');
SELECT is(pg_temp.apply('{task}', '{T1711}', '{k1}', '{completed}', '{NULL}', NULL, NULL, 'ed@example.org'),
          ARRAY['T1711 false employee Ed Gone (o_ed) is inactive and may not change contact logs'],
          'an inactive employee''s change: refused');
SELECT is(pg_temp.apply('{task}', '{T1701}', '{k2}', '{completed}', '{NULL}', NULL, NULL, 'nobody@example.org'),
          ARRAY['T1701 false not ours'], 'an item of ours, but read from another mailbox: not ours');
SELECT is(pg_temp.apply('{task}', '{X1}', '{k1}', '{completed}', '{NULL}'),
          ARRAY['X1 false not ours'], 'an item without our record: not ours');

-- ---- no echo ------------------------------------------------------------------------------
SELECT pg_temp.version_of(1704) AS v \gset
SELECT is(pg_temp.apply('{appointment,task}', '{A1704,T1704}', '{k0,k0}', '{moved,completed}',
                        '{2030-05-01T09:00:00Z,NULL}'),
          ARRAY['A1704 false own change', 'T1704 false own change'],
          'the change key followupd recorded after its own write: our change coming back, skipped');
SELECT is(pg_temp.log_state(1704), 'in_progress/601/2030-01-04 09:00', 'own change: the log is unchanged');
SELECT is(pg_temp.changes(1704), '{}'::text[], 'own change: nothing recorded');
SELECT is(pg_temp.version_of(1704), :v::bigint, 'own change: nothing queued');

-- ---- a page read twice --------------------------------------------------------------------
SELECT is(pg_temp.apply('{appointment}', '{A1707}', '{k5}', '{moved}', '{2030-07-07T07:00:00Z}'),
          ARRAY['A1707 true -'], 'a page read the first time: applied');
SELECT pg_temp.version_of(1707) AS v \gset
UPDATE contactlog.outlook_item SET change_key = 'k6' WHERE item_id = 'A1707';   -- the daemon wrote since
SELECT is(pg_temp.apply('{appointment}', '{A1707}', '{k5}', '{moved}', '{2030-07-07T07:00:00Z}'),
          ARRAY['A1707 false already recorded'], 'the same page again: already recorded');
SELECT is(cardinality(pg_temp.changes(1707)), 1, 'a page read twice applies once: one row');
SELECT is(pg_temp.version_of(1707), :v::bigint, 'a page read twice queues the log once');

-- ---- one edit, two changes (moved and completed, one change key) --------------------------
SELECT is(pg_temp.apply('{task,task}', '{T1708,T1708}', '{k3,k3}', '{moved,completed}',
                        '{2030-08-09T09:00:00Z,NULL}'),
          ARRAY['T1708 true -', 'T1708 true -'],
          'one edit, two changes: both applied (the first is no conflict for the second, nor an echo)');
SELECT is(pg_temp.log_state(1708), 'completed/-/2030-08-09 09:00', 'one edit, two changes: moved and completed');

-- ---- deleted -------------------------------------------------------------------------------
SELECT pg_temp.version_of(1705) AS v \gset
SELECT is(pg_temp.apply('{appointment}', '{A1705}', '{NULL}', '{deleted}', '{NULL}'),
          ARRAY['A1705 true -'], 'deleted in Outlook: recorded as applied');
SELECT is(pg_temp.log_state(1705), 'in_progress/601/2030-01-05 09:00', 'deleted: the log is unchanged');
SELECT ok((SELECT deleted_in_outlook FROM contactlog.outlook_item WHERE item_id = 'A1705'),
          'deleted: the item is flagged deleted_in_outlook (the one-way path does not recreate it)');
SELECT is(pg_temp.version_of(1705), :v::bigint, 'deleted: the log is not queued');
SELECT is(pg_temp.apply('{appointment}', '{A1705}', '{NULL}', '{deleted}', '{NULL}'),
          ARRAY['A1705 false already recorded'], 'deleted, read again: already recorded');
SELECT is(pg_temp.changes(1705), ARRAY['deleted true - - -'], 'deleted: one row');
-- A date from Outlook (the task moved) keeps the appointment deleted ...
SELECT is(pg_temp.apply('{task}', '{T1705}', '{k1}', '{moved}', '{2030-05-05T09:00:00Z}'),
          ARRAY['T1705 true -'], 'the task of a log whose appointment was deleted: moved');
SELECT ok((SELECT deleted_in_outlook FROM contactlog.outlook_item WHERE item_id = 'A1705'),
          'a date from Outlook does not bring the deleted appointment back');
-- ... a new date in the CRM brings it back, and so does followupctl resync.
UPDATE contactlog.contact_log SET next_contact_at = '2030-05-06 09:00+00' WHERE id = 1705;
SELECT ok(NOT (SELECT deleted_in_outlook FROM contactlog.outlook_item WHERE item_id = 'A1705'),
          'a new date in the CRM brings the deleted item back');
DELETE FROM contactlog.outlook_sync WHERE contact_log_id = 1705;            -- synced
UPDATE contactlog.outlook_item SET change_key = 'k7' WHERE item_id = 'A1705';  -- recreated by the daemon
SELECT is(pg_temp.apply('{appointment}', '{A1705}', '{NULL}', '{deleted}', '{NULL}'),
          ARRAY['A1705 true -'], 'deleted again, a later version: recorded again');
SELECT is((SELECT count(*)::int FROM contactlog.followupd_misplaced WHERE contact_log_id = 1705), 0,
          'a deleted item is never "to be moved"');
SELECT ok(contactlog.followupd_resync(1705), 'followupctl resync of the log');
SELECT ok(NOT (SELECT deleted_in_outlook FROM contactlog.outlook_item WHERE item_id = 'A1705'),
          'followupctl resync brings the deleted item back');
-- The mailbox of only deleted items is not watched.
SELECT is(pg_temp.apply('{appointment,task}', '{A1713,T1713}', '{NULL,NULL}', '{deleted,deleted}',
                        '{NULL,NULL}', NULL, NULL, 'BOB@example.org'),
          ARRAY['A1713 true -', 'T1713 true -'], 'both of Bob''s items deleted');
SELECT ok(NOT EXISTS (SELECT 1 FROM contactlog.followupd_watched_mailboxes() WHERE mailbox = 'bob@example.org'),
          'a mailbox whose items are all deleted is not watched any more');

-- ---- conflict: the CRM changed the log, not yet in Outlook ---------------------------------
UPDATE contactlog.contact_log SET reason = 'changed in the CRM' WHERE id = 1706;
SELECT is(pg_temp.apply('{appointment}', '{A1706}', '{k1}', '{moved}', '{2030-06-07T09:00:00Z}'),
          ARRAY['A1706 false changed in the CRM meanwhile'],
          'conflict: an Outlook change to a log with a CRM change not yet in Outlook is refused');
SELECT is(pg_temp.log_state(1706), 'in_progress/601/2030-01-06 09:00', 'conflict: the CRM''s state stays');
SELECT is(pg_temp.changes(1706),
          ARRAY['moved false 2030-01-06T09:00:00Z 2030-06-07T09:00:00Z changed in the CRM meanwhile'],
          'conflict: recorded with the reason');
SELECT ok(pg_temp.forced(1706), 'conflict: a forced pass puts the CRM''s content into Outlook');
SELECT is(pg_temp.apply('{task}', '{T1706}', '{k1}', '{completed}', '{NULL}'),
          ARRAY['T1706 false changed in the CRM meanwhile'],
          'conflict: still so for the next change until the CRM''s version is synced');
INSERT INTO contactlog.outlook_queue (contact_log_id, synced_version)
VALUES (1706, pg_temp.version_of(1706));                                      -- the daemon synced it
SELECT is(pg_temp.apply('{task}', '{T1706}', '{k2}', '{completed}', '{NULL}'),
          ARRAY['T1706 true -'], 'once Outlook has the CRM''s version, a change is applied');

-- ---- bad input is refused per change, the page goes on -------------------------------------
SELECT is(pg_temp.apply('{appointment,task,task}', '{A1709,T1709,T1709}', '{k1,k1,k1}',
                        '{moved,renamed,completed}', '{next tuesday,NULL,NULL}', 'calendar', 'C2'),
          ARRAY['A1709 false ''next tuesday'' is not a date and time',
                'T1709 false unknown change ''renamed'': expected completed, moved or deleted',
                'T1709 true -'],
          'an unreadable date is refused, an unknown change skipped, the rest of the page applied');
SELECT is(pg_temp.log_state(1709), 'completed/-/2030-01-09 09:00', 'bad input: the good change is applied');
SELECT is((SELECT calendar_position FROM contactlog.outlook_watch WHERE mailbox = 'alice@example.org'),
          'C2', 'bad input: the position is stored');
SELECT is(pg_temp.apply('{appointment}', '{A1712}', '{k1}', '{moved}', '{infinity}'),
          ARRAY['A1712 false ''infinity'' is not a date and time'], 'moved to infinity: refused');

-- ---- all or nothing ---------------------------------------------------------------------------
SELECT throws_ok($$SELECT pg_temp.apply('{task}', '{T1712}', '{k1}', '{completed}', '{NULL}', 'bogus', 'C3')$$,
                 '22023', NULL, 'a call that fails (an unknown position kind) raises');
SELECT throws_ok($$SELECT pg_temp.apply('{task}', '{T1712,A1712}', '{k1}', '{completed}', '{NULL}', 'calendar', 'C3')$$,
                 '22023', NULL, 'arrays of different lengths raise');
-- The position is stored last: when that fails, the changes applied before it go too.
ALTER TABLE contactlog.outlook_watch ADD CONSTRAINT test_fail CHECK (calendar_position <> 'FAIL');
SELECT throws_ok($$SELECT pg_temp.apply('{task}', '{T1712}', '{k1}', '{completed}', '{NULL}', 'calendar', 'FAIL')$$,
                 '23514', NULL, 'a call whose position cannot be stored raises');
ALTER TABLE contactlog.outlook_watch DROP CONSTRAINT test_fail;
SELECT is(pg_temp.log_state(1712), 'in_progress/601/2030-01-12 09:00',
          'a failed call applies no change (not even one applied before the failure)');
SELECT is(pg_temp.changes(1712),
          ARRAY['moved false 2030-01-12T09:00:00Z infinity ''infinity'' is not a date and time'],
          'a failed call records no change (only the refusal before it is there)');
SELECT is((SELECT change_key FROM contactlog.outlook_item WHERE item_id = 'T1712'), 'k0',
          'a failed call records no change key');
SELECT is((SELECT calendar_position FROM contactlog.outlook_watch WHERE mailbox = 'alice@example.org'),
          'C2', 'a failed call stores no position');

-- ---- positions without changes ------------------------------------------------------------------
SELECT contactlog.followupd_watch_position('ED@example.org', 'subscription', 'sub-1', NULL);
SELECT contactlog.followupd_watch_position('ed@example.org', NULL, NULL, 'ErrorServerBusy');
SELECT is((SELECT subscription_id || ' ' || last_error || ' ' || resync_needed
           FROM contactlog.outlook_watch WHERE mailbox = 'ed@example.org'),
          'sub-1 ErrorServerBusy true', 'followupd_watch_position stores a subscription and an error');
SELECT contactlog.followupd_watch_position('ed@example.org', 'calendar', 'C-ed', NULL);
SELECT contactlog.followupd_watch_position('ed@example.org', 'tasks', 'T-ed', NULL);
SELECT is((SELECT calendar_position || ' ' || tasks_position || ' ' || coalesce(last_error, '-') || ' ' || resync_needed
           FROM contactlog.outlook_watch WHERE mailbox = 'ed@example.org'),
          'C-ed T-ed - false', 'positions of both folders: read on from there, the error cleared');
SELECT contactlog.followupd_watch_reset('ed@example.org', 'ErrorInvalidSyncStateData');
SELECT is((SELECT coalesce(calendar_position, '-') || ' ' || coalesce(tasks_position, '-') || ' '
                  || subscription_id || ' ' || last_error || ' ' || resync_needed
           FROM contactlog.outlook_watch WHERE mailbox = 'ed@example.org'),
          '- - sub-1 ErrorInvalidSyncStateData true', 'followupd_watch_reset: read afresh');
SELECT is((SELECT calendar_position FROM contactlog.followupd_watched_mailboxes() WHERE mailbox = 'alice@example.org'),
          'C2', 'the watched mailboxes come with their positions');

-- ---- roles ---------------------------------------------------------------------------------------
CREATE ROLE o_alice LOGIN IN ROLE contactlog_staff;
CREATE ROLE o_daemon LOGIN IN ROLE contactlog_daemon;
SET SESSION AUTHORIZATION o_alice;
SELECT throws_ok($$SELECT * FROM contactlog.followupd_apply_outlook_changes('alice@example.org', '{task}',
                   '{T1712}', '{k9}', '{completed}', '{NULL}', NULL, NULL)$$,
                 '42501', 'permission denied for function followupd_apply_outlook_changes',
                 'staff may not apply Outlook changes');
SELECT throws_ok($$SELECT contactlog.followupd_watch_reset('alice@example.org')$$,
                 '42501', 'permission denied for function followupd_watch_reset',
                 'staff may not touch the watch positions');
SELECT ok((SELECT count(*) FROM contactlog.outlook_changes) > 0, 'staff reads outlook_changes');
SELECT throws_ok('SELECT * FROM contactlog.outlook_change_log', '42501',
                 'permission denied for table outlook_change_log', 'staff may not read the table behind it');
SELECT throws_ok($$DELETE FROM contactlog.outlook_change_log$$, '42501',
                 'permission denied for table outlook_change_log', 'staff may not rewrite what flowed back');
SET SESSION AUTHORIZATION o_daemon;
SELECT is(pg_temp.apply('{task}', '{T1712}', '{k9}', '{completed}', '{NULL}'),
          ARRAY['T1712 true -'], 'the daemon applies a change, as the mailbox''s employee');
SELECT ok((SELECT count(*) FROM contactlog.followupd_watched_mailboxes()) > 0,
          'the daemon reads the watched mailboxes');
SELECT ok((SELECT count(*) FROM contactlog.outlook_changes) > 0, 'the daemon reads outlook_changes');
RESET SESSION AUTHORIZATION;
SELECT is(pg_temp.log_state(1712), 'completed/-/2030-01-12 09:00', 'the daemon''s change is in the log');
SELECT ok(has_table_privilege('contactlog_admin', 'contactlog.outlook_changes', 'SELECT')
          AND has_table_privilege('contactlog_app', 'contactlog.outlook_changes', 'SELECT'),
          'app and the attributes'' administrators read outlook_changes');

-- ---- SyncFromOutlook back to 0 ---------------------------------------------------------------
UPDATE contactlog.attribute SET value = '0' WHERE name = 'SyncFromOutlook';
SELECT is((SELECT count(*)::int FROM contactlog.followupd_watched_mailboxes()), 0,
          'SyncFromOutlook = 0 again: nothing is watched');

SELECT * FROM finish();
ROLLBACK;
