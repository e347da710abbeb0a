-- The schema and its transactional outbox (issue: foundation).
BEGIN;
SELECT plan(16);

-- How many times the log was queued: the outbox version grows with every change
-- (versions come from one sequence), so count the distinct versions seen so far.
CREATE TEMP TABLE seen_outbox_versions (contact_log_id bigint, version bigint);
CREATE FUNCTION pg_temp.times_queued(log_id bigint) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO seen_outbox_versions
    SELECT s.contact_log_id, s.version FROM contactlog.outlook_sync s
    WHERE s.contact_log_id = log_id
      AND NOT EXISTS (SELECT 1 FROM seen_outbox_versions v
                      WHERE v.contact_log_id = log_id AND v.version = s.version);
    SELECT count(*) FROM seen_outbox_versions WHERE contact_log_id = log_id;
$$;

SELECT has_table('contactlog', 'employee', 'employee table');
SELECT has_table('contactlog', 'contact_log', 'contact_log table');
SELECT has_table('contactlog', 'attribute', 'attribute table');
SELECT cmp_ok((SELECT max(version) FROM contactlog.schema_version), '>=', 3, 'schema at version 3 or later');
SELECT is((SELECT count(*)::int FROM contactlog.attribute), 7, 'seven attributes seeded');
SELECT is((SELECT value FROM contactlog.attribute WHERE name = 'AddToCalendar'), '1',
          'AddToCalendar defaults to 1');

INSERT INTO contactlog.employee (login, display_name, email) VALUES ('t', 'Tess', 't@x');
INSERT INTO contactlog.contact_log (created_by, contact_name, reason, next_contact_at)
VALUES (1, 'C', 'r', now() + interval '1 day');

SELECT is((SELECT status || '/' || owner_id FROM contactlog.contact_log), 'in_progress/1',
          'a new log is in progress, locked by its creator');
SELECT is(pg_temp.times_queued(1), 1::bigint,
          'the insert queued the log');
SELECT ok((SELECT inserted_with_follow_up FROM contactlog.outlook_sync), 'inserted with follow-up');

UPDATE contactlog.contact_log SET notes = 'only notes' WHERE id = 1;
SELECT is(pg_temp.times_queued(1), 1::bigint,
          'a change Outlook does not show does not queue');
UPDATE contactlog.contact_log SET reason = 'new reason' WHERE id = 1;
SELECT is(pg_temp.times_queued(1), 2::bigint, 'a reason change queues');

SAVEPOINT before_rollback;
INSERT INTO contactlog.contact_log (created_by, contact_name, next_contact_at)
VALUES (1, 'Rolled back', now());
ROLLBACK TO SAVEPOINT before_rollback;
SELECT is((SELECT count(*)::int FROM contactlog.outlook_sync), 1, 'a rolled-back insert leaves nothing');

SELECT throws_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name, status, owner_id)
                   VALUES (1, 'x', 'open', 1)$$, '23514', NULL,
                 'an open log cannot have an owner');

UPDATE contactlog.attribute SET value = 'yes' WHERE name = 'AddToCalendar';
SELECT is((SELECT effective_value FROM contactlog.effective_attribute WHERE name = 'AddToCalendar'),
          '1', 'an invalid flag falls back to its default');
SELECT matches((SELECT problem FROM contactlog.effective_attribute WHERE name = 'AddToCalendar'),
               'must be 0 or 1', 'and the problem is reported');
UPDATE contactlog.attribute SET value = 'https://crm/"x' WHERE name = 'LinkUrlTemplate';
SELECT isnt((SELECT problem FROM contactlog.effective_attribute WHERE name = 'LinkUrlTemplate'),
            NULL, 'a link template without {id} or with quotes is refused');

SELECT * FROM finish();
ROLLBACK;
