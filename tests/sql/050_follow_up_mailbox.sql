-- FollowUpMailbox = owner (issue 16): what marks a log dirty, what the claim tells
-- the daemon about the owner, and the count of items not yet home.
BEGIN;
SELECT plan(16);

CREATE FUNCTION pg_temp.version_of(log_id bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce((SELECT version FROM contactlog.outlook_sync WHERE contact_log_id = log_id), 0);
$$;

INSERT INTO contactlog.employee (id, login, display_name, email)
VALUES (101, 'alice', 'Alice', 'alice@example.org'),
       (102, 'bob', 'Bob', 'bob@example.org'),
       (103, 'nomail', 'No Mail', NULL);
INSERT INTO contactlog.contact_log (id, created_by, contact_name, reason, next_contact_at)
VALUES (901, 101, 'C1', 'r', now() + interval '1 day'),
       (902, 101, 'C2', 'r', now() + interval '1 day');
UPDATE contactlog.contact_log SET status = 'completed', owner_id = NULL WHERE id = 902;
INSERT INTO contactlog.outlook_item (contact_log_id, kind, mailbox, item_id)
VALUES (901, 'appointment', 'alice@example.org', 'A1'),
       (901, 'task', 'alice@example.org', 'T1'),
       (902, 'appointment', 'alice@example.org', 'A2');

SELECT is((SELECT effective_value FROM contactlog.effective_attribute WHERE name = 'FollowUpMailbox'),
          'creator', 'FollowUpMailbox defaults to creator');
SELECT is((SELECT count(*)::int FROM contactlog.followupd_misplaced), 0,
          'with creator, items in the creator''s mailbox are home');

-- With creator, a new owner shows nothing in Outlook: no new version.
SELECT pg_temp.version_of(901) AS v \gset
UPDATE contactlog.contact_log SET owner_id = 102 WHERE id = 901;
SELECT is(pg_temp.version_of(901), :v::bigint, 'creator: an owner change does not queue the log');

-- Switching the attribute queues every log with items, not completed ones.
SELECT pg_temp.version_of(902) AS v2 \gset
INSERT INTO contactlog.attribute (name, value) VALUES ('FollowUpMailbox', 'owner');
SELECT cmp_ok(pg_temp.version_of(901), '>', :v::bigint,
              'switching to owner queues a log with items (an appointment and a task: once)');
SELECT is(pg_temp.version_of(902), :v2::bigint, 'but not a completed one (its items stay)');
SELECT is((SELECT home FROM contactlog.followupd_misplaced
           WHERE contact_log_id = 901 AND kind = 'appointment'),
          'bob@example.org', 'the item of a log Bob owns belongs in Bob''s mailbox');
SELECT is((SELECT items_to_move FROM contactlog.followupd_status), 2::bigint,
          'followupctl status counts it as to be moved');

SELECT pg_temp.version_of(901) AS v \gset
UPDATE contactlog.attribute SET value = 'owner' WHERE name = 'FollowUpMailbox';
SELECT is(pg_temp.version_of(901), :v::bigint, 'the same value written again queues nothing');

-- With owner, an owner change queues the log.
UPDATE contactlog.contact_log SET owner_id = 101 WHERE id = 901;
SELECT cmp_ok(pg_temp.version_of(901), '>', :v::bigint, 'owner: an owner change queues the log');
SELECT is((SELECT count(*)::int FROM contactlog.followupd_misplaced), 0,
          'back with Alice, the item is home again');

-- The claim names the owner only when the owner can hold the items.
UPDATE contactlog.contact_log SET owner_id = 103 WHERE id = 901;
SELECT is((SELECT owner_email FROM contactlog.followupd_claim(10, 60, 'test:1', 0)
           WHERE contact_log_id = 901), NULL, 'an owner without email is nobody: no owner mailbox');
SELECT is((SELECT home FROM contactlog.followupd_misplaced
           WHERE contact_log_id = 901 AND kind = 'appointment'), NULL,
          'and the item stays home in the creator''s mailbox');

-- A claim whose job never ended (lease run out, daemon gone) makes the next pass a
-- forced one: a move's delete may have been performed and not recorded.
SELECT is((SELECT redo FROM contactlog.outlook_queue WHERE contact_log_id = 901), 0,
          'the first claim (test:1 above) was no redo');
UPDATE contactlog.outlook_queue SET claimed_until = now() - interval '1 s'   -- lapsed
WHERE contact_log_id = 901;
SELECT is((SELECT forced FROM contactlog.followupd_claim(10, 60, 'test:3', 0)
           WHERE contact_log_id = 901), true,
          'a claim over a job that never ended is forced (recorded hashes not trusted)');

UPDATE contactlog.attribute SET value = 'Owner ' WHERE name = 'FollowUpMailbox';
SELECT matches((SELECT problem FROM contactlog.effective_attribute WHERE name = 'FollowUpMailbox'),
               'must be creator or owner', 'a misspelt FollowUpMailbox is a problem');
SELECT is((SELECT effective_value FROM contactlog.effective_attribute WHERE name = 'FollowUpMailbox'),
          'creator', 'and the default applies');

SELECT * FROM finish();
ROLLBACK;
