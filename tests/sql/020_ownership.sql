-- Ownership of contact logs (issue 5, SPEC §2 "Ownership"): take, surrender,
-- assign, complete, each allowed and refused; owner-only UPDATE and DELETE by a
-- trusted front end (contactlog_app) naming contactlog.actor; no check for
-- maintenance (this superuser session); refusals change nothing. Staff logins,
-- the other roles and hostile callers: 040_roles.sql.
BEGIN;
SELECT plan(103);

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

-- People: three staff, an administrator, an inactive employee.
INSERT INTO contactlog.employee (id, login, display_name, email, role, active) VALUES
    (101, 'alice', 'Alice Archer', 'alice@example.org', 'staff', true),
    (102, 'bob',   'Bob Baker',    'bob@example.org',   'staff', true),
    (103, 'carol', 'Carol Clerk',  'carol@example.org', 'staff', true),
    (104, 'dora',  'Dora Admin',   'dora@example.org',  'admin', true),
    (105, 'ed',    'Ed Gone',      'ed@example.org',    'staff', false);

-- Logs are set up as maintenance (no actor).
SET LOCAL contactlog.actor = '';
INSERT INTO contactlog.contact_log (id, created_by, contact_name, reason, next_contact_at)
VALUES (1001, 101, 'Ada', 'call back', '2030-01-01 09:00+00');
INSERT INTO contactlog.contact_log (id, created_by, contact_name, status, reason, next_contact_at)
VALUES (1002, 102, 'Babbage', 'open', 'send offer', '2030-01-02 09:00+00'),
       (1003, 102, 'Curie', 'completed', NULL, NULL),
       (1004, 103, 'Dijkstra', 'open', NULL, NULL),
       (1005, 103, 'Euler', 'open', NULL, NULL);

SELECT has_function('contactlog', 'take', ARRAY['bigint', 'bigint'], 'take(log_id, actor_id)');
SELECT has_function('contactlog', 'surrender', ARRAY['bigint', 'bigint'], 'surrender(log_id, actor_id)');
SELECT has_function('contactlog', 'assign', ARRAY['bigint', 'bigint', 'bigint'],
                    'assign(log_id, actor_id, assignee_id)');
SELECT has_function('contactlog', 'complete', ARRAY['bigint', 'bigint'], 'complete(log_id, actor_id)');

SELECT is((SELECT status || '/' || owner_id FROM contactlog.contact_log WHERE id = 1001),
          'in_progress/101', 'a new log is in progress, locked by its creator');

-- Everything below compares the logs with this copy after each refusal.
CREATE TEMP TABLE snapshot ON COMMIT DROP AS SELECT * FROM contactlog.contact_log;
CREATE FUNCTION pg_temp.unchanged() RETURNS SETOF contactlog.contact_log LANGUAGE sql AS
    'SELECT * FROM snapshot ORDER BY id';
CREATE FUNCTION pg_temp.resnap() RETURNS void LANGUAGE sql AS
    'DELETE FROM snapshot; INSERT INTO snapshot SELECT * FROM contactlog.contact_log';
CREATE FUNCTION pg_temp.state(log_id bigint) RETURNS text LANGUAGE sql AS
    $$SELECT status || '/' || coalesce(owner_id::text, '-') || '/' || coalesce(assigned_to::text, '-')
      FROM contactlog.contact_log WHERE id = log_id$$;

-- ---- take -------------------------------------------------------------------
SELECT throws_ok('SELECT contactlog.take(1001, 102)', '42501',
                 'contact log 1001 is locked by Alice Archer (alice)',
                 'take: staff may not take a log locked by someone else');
SELECT results_eq('SELECT * FROM contactlog.contact_log ORDER BY id', 'SELECT * FROM pg_temp.unchanged()',
                  'take: the refused call changed nothing');
SELECT throws_ok('SELECT contactlog.take(1003, 102)', '42501', 'contact log 1003 is completed',
                 'take: nobody takes a completed log (staff)');
SELECT throws_ok('SELECT contactlog.take(1003, 104)', '42501', 'contact log 1003 is completed',
                 'take: nobody takes a completed log (admin)');
SELECT throws_ok('SELECT contactlog.take(9999, 102)', 'P0002', 'contact log 9999 does not exist',
                 'take: unknown log');
SELECT throws_ok('SELECT contactlog.take(1002, 9999)', 'P0002', 'acting employee 9999 does not exist',
                 'take: unknown actor');
SELECT throws_ok('SELECT contactlog.take(1002, 105)', '42501',
                 'employee Ed Gone (ed) is inactive and may not change contact logs',
                 'take: inactive actor');
SELECT throws_ok('SELECT contactlog.take(1002, NULL)', '22023', NULL, 'take: NULL actor');
SELECT throws_ok('SELECT contactlog.take(NULL, 102)', '22023', NULL, 'take: NULL log');
SELECT results_eq('SELECT * FROM contactlog.contact_log ORDER BY id', 'SELECT * FROM pg_temp.unchanged()',
                  'take: refused calls changed nothing');

SELECT is((contactlog.take(1002, 102)).owner_id, 102::bigint, 'take: staff takes an open log');
SELECT is(pg_temp.state(1002), 'in_progress/102/-', 'take: the open log is now in progress, owned by the taker');
SELECT is((contactlog.take(1002, 102)).owner_id, 102::bigint, 'take: taking one''s own log again is a no-op');
SELECT is((contactlog.take(1001, 104)).owner_id, 104::bigint,
          'take: an admin takes over a log locked by someone else');
SELECT is(pg_temp.state(1001), 'in_progress/104/-', 'take: forced takeover, owner is the admin');
SELECT is((contactlog.take(1004, 104)).owner_id, 104::bigint, 'take: an admin takes an open log');

-- ---- surrender --------------------------------------------------------------
SELECT pg_temp.resnap();
SELECT throws_ok('SELECT contactlog.surrender(1002, 101)', '42501',
                 'contact log 1002 is locked by Bob Baker (bob)',
                 'surrender: staff may not surrender someone else''s log');
SELECT throws_ok('SELECT contactlog.surrender(1002, 104)', '42501',
                 'contact log 1002 is locked by Bob Baker (bob)',
                 'surrender: an admin may not surrender someone else''s log either');
SELECT throws_ok('SELECT contactlog.surrender(1005, 103)', '42501',
                 'contact log 1005 is open (locked by nobody)', 'surrender: an open log');
SELECT throws_ok('SELECT contactlog.surrender(1003, 102)', '42501', 'contact log 1003 is completed',
                 'surrender: a completed log');
SELECT results_eq('SELECT * FROM contactlog.contact_log ORDER BY id', 'SELECT * FROM pg_temp.unchanged()',
                  'surrender: refused calls changed nothing');
SELECT is(pg_temp.state((contactlog.surrender(1002, 102)).id), 'open/-/-',
          'surrender: the owner gives the log back: open, no owner');
SELECT is((contactlog.take(1002, 101)).owner_id, 101::bigint, 'take: someone else takes the surrendered log');

-- ---- assign -----------------------------------------------------------------
SELECT pg_temp.resnap();
SELECT throws_ok('SELECT contactlog.assign(1002, 102, 103)', '42501',
                 'contact log 1002 is locked by Alice Archer (alice)',
                 'assign: staff may not assign a log locked by someone else');
SELECT throws_ok('SELECT contactlog.assign(1003, 102, 103)', '42501', 'contact log 1003 is completed',
                 'assign: staff may not assign a completed log');
SELECT throws_ok('SELECT contactlog.assign(1002, 101, 105)', '22023',
                 'cannot assign a contact log to Ed Gone (ed): the employee is inactive',
                 'assign: not to an inactive employee');
SELECT throws_ok('SELECT contactlog.assign(1002, 101, 9999)', 'P0002', 'assignee 9999 does not exist',
                 'assign: not to an unknown employee');
SELECT throws_ok('SELECT contactlog.assign(1002, 105, 103)', '42501', NULL,
                 'assign: an inactive actor may not assign');
SELECT throws_ok('SELECT contactlog.assign(9999, 101, 103)', 'P0002', 'contact log 9999 does not exist',
                 'assign: unknown log');
SELECT results_eq('SELECT * FROM contactlog.contact_log ORDER BY id', 'SELECT * FROM pg_temp.unchanged()',
                  'assign: refused calls changed nothing');

SELECT is(pg_temp.state((contactlog.assign(1002, 101, 103)).id), 'in_progress/103/103',
          'assign: the owner hands the log over: owner and assigned_to = assignee');
SELECT is(pg_temp.state((contactlog.assign(1005, 102, 101)).id), 'in_progress/101/101',
          'assign: anyone assigns an open log');
SELECT is(pg_temp.state((contactlog.assign(1002, 104, 102)).id), 'in_progress/102/102',
          'assign: an admin assigns a log locked by someone else');
SELECT is(pg_temp.state((contactlog.assign(1003, 104, 102)).id), 'in_progress/102/102',
          'assign: an admin assigns (reopens) a completed log');
SELECT is(pg_temp.state((contactlog.assign(1002, 102, 102)).id), 'in_progress/102/102',
          'assign: the owner may assign the log to themself');

-- ---- complete ---------------------------------------------------------------
SELECT pg_temp.resnap();
SELECT throws_ok('SELECT contactlog.complete(1002, 101)', '42501',
                 'contact log 1002 is locked by Bob Baker (bob)',
                 'complete: staff may not complete someone else''s log');
SELECT throws_ok('SELECT contactlog.complete(1002, 104)', '42501',
                 'contact log 1002 is locked by Bob Baker (bob)',
                 'complete: an admin may not complete someone else''s log');
INSERT INTO contactlog.contact_log (id, created_by, contact_name, status) VALUES (1006, 101, 'Fermat', 'open');
SELECT pg_temp.resnap();
SELECT throws_ok('SELECT contactlog.complete(1006, 101)', '42501',
                 'contact log 1006 is open (locked by nobody)', 'complete: an open log');
SELECT results_eq('SELECT * FROM contactlog.contact_log ORDER BY id', 'SELECT * FROM pg_temp.unchanged()',
                  'complete: refused calls changed nothing');
SELECT is(pg_temp.state((contactlog.complete(1002, 102)).id), 'completed/-/102',
          'complete: the owner completes the log: completed, no owner');
SELECT throws_ok('SELECT contactlog.complete(1002, 102)', '42501', 'contact log 1002 is completed',
                 'complete: a completed log cannot be completed again');

-- ---- the functions and contactlog.actor ---------------------------------------
SET LOCAL contactlog.actor = '103';
SELECT is(pg_temp.state((contactlog.take(1006, 101)).id), 'in_progress/101/-',
          'the functions work with contactlog.actor set to someone else');
SELECT is(current_setting('contactlog.actor'), '103', 'and leave the caller''s contactlog.actor as it was');
SELECT throws_ok('SELECT contactlog.surrender(1006, 103)', '42501', NULL,
                 'they check the actor passed in, not contactlog.actor');
SELECT is(current_setting('contactlog.actor'), '103', 'contactlog.actor is restored after a refusal too');
SET LOCAL contactlog.actor = '';
SELECT is(pg_temp.state((contactlog.surrender(1006, 101)).id), 'open/-/-',
          'the functions work with no actor set');

-- ---- owner-only UPDATE and DELETE with an actor set -----------------------------
-- Maintenance (this superuser session) is not checked: plain statements run from
-- here to "no actor, no check" as a front end's login, member of contactlog_app.
CREATE ROLE o_app LOGIN IN ROLE contactlog_app;
GRANT ALL ON snapshot TO PUBLIC;
SET SESSION AUTHORIZATION o_app;
-- Now: 1001 in progress (dora), 1002 completed, 1003 in progress (bob),
-- 1004 in progress (dora), 1005 in progress (alice), 1006 open.
SELECT is(ARRAY(SELECT pg_temp.state(id) FROM contactlog.contact_log ORDER BY id),
          ARRAY['in_progress/104/-', 'completed/-/102', 'in_progress/102/102',
                'in_progress/104/-', 'in_progress/101/101', 'open/-/-'],
          'the logs are where the script put them');
SELECT pg_temp.resnap();

SET LOCAL contactlog.actor = '101';
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'by alice' WHERE id = 1005$$,
                'UPDATE: the owner changes their log');
SELECT is((SELECT notes FROM contactlog.contact_log WHERE id = 1005), 'by alice', 'UPDATE: the change is there');
SELECT pg_temp.resnap();
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'by alice' WHERE id = 1003$$, '42501',
                 'contact log 1003 is locked by Bob Baker (bob)',
                 'UPDATE: staff may not change a log locked by someone else');
SELECT throws_ok($$UPDATE contactlog.contact_log SET status = 'completed', owner_id = NULL WHERE id = 1003$$,
                 '42501', 'permission denied for table contact_log',
                 'UPDATE: not even to complete it (status and owner_id move only through the functions)');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1006$$, '42501',
                 'contact log 1006 is open (locked by nobody)', 'UPDATE: staff may not change an open log');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1002$$, '42501',
                 'contact log 1002 is completed', 'UPDATE: staff may not change a completed log');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id IN (1003, 1005)$$, '42501',
                 'contact log 1003 is locked by Bob Baker (bob)',
                 'UPDATE: one foreign log in the statement refuses all of it');
SELECT throws_ok($$UPDATE contactlog.contact_log SET owner_id = 101 WHERE id = 1003$$, '42501',
                 'permission denied for table contact_log',
                 'UPDATE: staff may not grab a lock by writing owner_id');
SELECT results_eq('SELECT * FROM contactlog.contact_log ORDER BY id', 'SELECT * FROM pg_temp.unchanged()',
                  'UPDATE: refused statements changed nothing');

SET LOCAL contactlog.actor = '102';
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1002$$, '42501',
                 'contact log 1002 is completed', 'UPDATE: not even the creator changes a completed log');
SET LOCAL contactlog.actor = '104';
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1003$$, '42501',
                 'contact log 1003 is locked by Bob Baker (bob)',
                 'UPDATE: an admin may not change a log locked by someone else (take it over first)');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1006$$, '42501',
                 'contact log 1006 is open (locked by nobody)', 'UPDATE: an admin may not change an open log');
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'checked' WHERE id = 1002$$,
                'UPDATE: an admin changes a completed log');
SELECT throws_ok($$UPDATE contactlog.contact_log SET status = 'open' WHERE id = 1002$$, '42501',
                 'permission denied for table contact_log',
                 'UPDATE: an admin does not write status either (assign reopens a completed log)');
RESET SESSION AUTHORIZATION;
UPDATE contactlog.contact_log SET status = 'open' WHERE id = 1002;
SET SESSION AUTHORIZATION o_app;
SELECT is(pg_temp.state(1002), 'open/-/102', 'maintenance reopened the completed log');
SELECT lives_ok($$UPDATE contactlog.contact_log SET reason = 'admin''s own' WHERE id = 1004$$,
                'UPDATE: an admin changes a log they own');
SELECT pg_temp.resnap();

-- The refusal names the owner and who tried, with a hint.
CREATE FUNCTION pg_temp.refusal(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE m text; d text; h text;
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN insufficient_privilege THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN m || ' | ' || d || ' | ' || h;
END
$$;
SET LOCAL contactlog.actor = '103';
SELECT is(pg_temp.refusal($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1005$$),
          'contact log 1005 is locked by Alice Archer (alice) | Carol Clerk (carol) may not update it. | '
          'Only its owner may change it; an administrator may take it over with contactlog.take().',
          'the refusal says who holds the log, who tried and what to do');

-- DELETE: a change like any other.
SELECT throws_ok('DELETE FROM contactlog.contact_log WHERE id = 1005', '42501',
                 'contact log 1005 is locked by Alice Archer (alice)', 'DELETE: refused for a non-owner');
SELECT throws_ok('DELETE FROM contactlog.contact_log WHERE id = 1006', '42501',
                 'contact log 1006 is open (locked by nobody)', 'DELETE: refused on an open log');
SET LOCAL contactlog.actor = '102';
SELECT throws_ok('DELETE FROM contactlog.contact_log WHERE id = 1002', '42501',
                 'contact log 1002 is open (locked by nobody)', 'DELETE: refused for the creator of an open log');
SELECT results_eq('SELECT * FROM contactlog.contact_log ORDER BY id', 'SELECT * FROM pg_temp.unchanged()',
                  'DELETE: refused statements changed nothing');
SET LOCAL contactlog.actor = '101';
SELECT lives_ok('DELETE FROM contactlog.contact_log WHERE id = 1005', 'DELETE: the owner deletes their log');
SELECT is((SELECT count(*)::int FROM contactlog.contact_log WHERE id = 1005), 0, 'DELETE: the log is gone');

-- The actor setting itself.
SET LOCAL contactlog.actor = 'alice';
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1001$$, '22023',
                 'contactlog.actor = ''alice'' is not an employee id', 'a non-numeric actor is an error');
SET LOCAL contactlog.actor = '9999';
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1001$$, 'P0002',
                 'acting employee 9999 does not exist', 'an unknown actor is an error');
SET LOCAL contactlog.actor = '105';
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1001$$, '42501',
                 'employee Ed Gone (ed) is inactive and may not change contact logs',
                 'an inactive actor may not change logs');
SET LOCAL contactlog.actor = '104';
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 1099$$,
                'an UPDATE that matches no row is no change and no refusal');
SET LOCAL contactlog.actor = ' 104 ';
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'spaces' WHERE id = 1001$$,
                'spaces around the actor id are ignored');
SELECT results_eq('SELECT count(*)::int FROM contactlog.contact_log WHERE notes = ''spaces''', ARRAY[1],
                  'and the owner''s change was made');
SELECT pg_temp.resnap();

-- Inserting is not owning anything yet: anyone creates logs.
SET LOCAL contactlog.actor = '103';
SELECT lives_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name) VALUES (103, 'Gauss')$$,
                'INSERT with an actor set');
SELECT is(pg_temp.state((SELECT id FROM contactlog.contact_log WHERE contact_name = 'Gauss')),
          'in_progress/103/-', 'the new log is locked by its creator');
SELECT lives_ok($$UPDATE contactlog.contact_log SET priority = 'high' WHERE contact_name = 'Gauss'$$,
                'and the creator edits it');
SELECT throws_ok($$INSERT INTO contactlog.contact_log (id, created_by, contact_name) VALUES (1099, 103, 'Ids')$$,
                 '42501', 'permission denied for table contact_log',
                 'a front end does not choose ids (an outbox row may outlive a deleted log of that id)');

-- ---- no actor, no check ---------------------------------------------------------
-- Maintenance: the schema owner or a superuser (this session again).
RESET SESSION AUTHORIZATION;
SET LOCAL contactlog.actor = '';
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'maintenance' WHERE id IN (1001, 1002, 1003, 1006)$$,
                'no actor (empty): any log may be changed');
RESET contactlog.actor;
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'maintenance 2' WHERE id = 1003$$,
                'no actor (reset): any log may be changed');
SELECT lives_ok($$UPDATE contactlog.contact_log SET status = 'completed', owner_id = NULL WHERE id = 1003$$,
                'no actor: status and owner too');
SELECT lives_ok('DELETE FROM contactlog.contact_log WHERE id = 1006', 'no actor: any log may be deleted');

-- ---- the invariant, by constraint --------------------------------------------------
SELECT throws_ok($$UPDATE contactlog.contact_log SET owner_id = NULL WHERE id = 1001$$, '23514', NULL,
                 'in progress without an owner is refused by the constraint');
SELECT throws_ok($$UPDATE contactlog.contact_log SET owner_id = 101 WHERE id = 1003$$, '23514', NULL,
                 'completed with an owner is refused by the constraint');
SELECT throws_ok($$UPDATE contactlog.contact_log SET status = 'done' WHERE id = 1001$$, '23514', NULL,
                 'an unknown status is refused');

-- ---- what followupd sees ---------------------------------------------------------------
-- Lock changes do not touch Outlook; completing and assigning do (SPEC §3).
INSERT INTO contactlog.contact_log (id, created_by, contact_name, reason, next_contact_at)
VALUES (1008, 101, 'Hopper', 'demo', '2030-02-01 10:00+00');
SELECT is(pg_temp.times_queued(1008), 1::bigint,
          'outbox: the new log is queued once');
SELECT FROM contactlog.surrender(1008, 101);
SELECT FROM contactlog.take(1008, 102);
SELECT FROM contactlog.take(1008, 104);
SELECT is(pg_temp.times_queued(1008), 1::bigint,
          'outbox: surrender and take do not queue (nothing in Outlook changes)');
SELECT FROM contactlog.assign(1008, 104, 103);
SELECT is(pg_temp.times_queued(1008), 2::bigint,
          'outbox: assign queues (assigned_to is in the item)');
SELECT FROM contactlog.complete(1008, 103);
SELECT is(pg_temp.times_queued(1008), 3::bigint,
          'outbox: complete queues');
SELECT throws_ok('SELECT contactlog.take(1008, 101)', '42501', NULL, 'a completed log cannot be taken');
SELECT is(pg_temp.times_queued(1008), 3::bigint,
          'outbox: a refused call queues nothing');
SET LOCAL contactlog.actor = '101';
SET SESSION AUTHORIZATION o_app;
SELECT throws_ok($$UPDATE contactlog.contact_log SET reason = 'new' WHERE id = 1008$$, '42501', NULL,
                 'a refused UPDATE');
RESET SESSION AUTHORIZATION;
SELECT is(pg_temp.times_queued(1008), 3::bigint,
          'outbox: a refused UPDATE queues nothing');
SET LOCAL contactlog.actor = '104';
SET SESSION AUTHORIZATION o_app;
UPDATE contactlog.contact_log SET reason = 'admin fixes a typo' WHERE id = 1008;
RESET SESSION AUTHORIZATION;
SELECT is(pg_temp.times_queued(1008), 4::bigint,
          'outbox: an allowed UPDATE queues as before');

-- ---- the functions lock the row -----------------------------------------------------------
SELECT ok(EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'contactlog' AND p.proname = 'lock_log'
                    AND p.prosrc LIKE '%FOR UPDATE%'),
          'the ownership functions lock the log row (FOR UPDATE); the race itself is '
          'tests/integration/test_ownership_race.py');
SELECT is((SELECT array_agg(DISTINCT p.prosecdef::text || ' ' || array_to_string(p.proconfig, ','))
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'contactlog' AND p.proname IN ('take', 'surrender', 'assign', 'complete')),
          ARRAY['true search_path=pg_catalog, contactlog, pg_temp'],
          'the four functions are SECURITY DEFINER with a fixed search_path (issue 14), '
          'no longer SET contactlog.actor');

SELECT * FROM finish();
ROLLBACK;
