-- Ownership against a hostile client (issue 14, SPEC §2 "Ownership"), with real
-- roles: every login below is a role, and the tests switch into it with
-- SET SESSION AUTHORIZATION, so session_user is that login as it would be for a
-- client connecting with it. Per role (staff, an admin among staff, app, daemon,
-- attribute admin) each rule allowed and refused; staff naming someone else;
-- writes to followupd's tables and the attributes; a hostile search_path; and a
-- read of the grants themselves.
BEGIN;
SELECT plan(132);

-- ---- people, logins, logs --------------------------------------------------------
INSERT INTO contactlog.employee (id, login, display_name, email, role, active) VALUES
    (301, 'r_alice', 'Alice Archer', 'alice@example.org', 'staff', true),
    (302, 'r_bob',   'Bob Baker',    'bob@example.org',   'staff', true),
    (303, 'r_dora',  'Dora Admin',   'dora@example.org',  'admin', true),
    (304, 'r_ed',    'Ed Gone',      'ed@example.org',    'staff', false);
CREATE ROLE r_alice LOGIN IN ROLE contactlog_staff;
CREATE ROLE r_bob LOGIN IN ROLE contactlog_staff;
CREATE ROLE r_dora LOGIN IN ROLE contactlog_staff;
CREATE ROLE r_ed LOGIN IN ROLE contactlog_staff;
CREATE ROLE r_stranger LOGIN IN ROLE contactlog_staff;   -- no employee has this login
CREATE ROLE r_app LOGIN IN ROLE contactlog_app;
CREATE ROLE r_daemon LOGIN IN ROLE contactlog_daemon;
CREATE ROLE r_admin LOGIN IN ROLE contactlog_admin;
CREATE ROLE r_legacy LOGIN;                              -- in no group (see the end)

-- Set up as maintenance (this superuser session).
INSERT INTO contactlog.contact_log (id, created_by, contact_name, status, owner_id, reason, next_contact_at)
VALUES (3001, 301, 'Ada',      'in_progress', 301,  'call back',  '2030-01-01 09:00+00'),
       (3002, 302, 'Babbage',  'in_progress', 302,  'send offer', '2030-01-02 09:00+00'),
       (3003, 302, 'Curie',    'open',        NULL, NULL, NULL),
       (3004, 301, 'Dirac',    'completed',   NULL, NULL, NULL),
       (3005, 302, 'Euler',    'open',        NULL, NULL, NULL),
       (3006, 301, 'Fermat',   'in_progress', 301,  NULL, NULL),
       (3007, 302, 'Gauss',    'in_progress', 302,  NULL, NULL),
       (3008, 301, 'Hopper',   'in_progress', 301,  NULL, NULL),
       (3009, 302, 'Ishango',  'open',        NULL, NULL, NULL);

-- status/owner/assigned_to of a log, readable by every role that reads logs.
CREATE FUNCTION pg_temp.state(log_id bigint) RETURNS text LANGUAGE sql AS
    $$SELECT status || '/' || coalesce(owner_id::text, '-') || '/' || coalesce(assigned_to::text, '-')
      FROM contactlog.contact_log WHERE id = log_id$$;

-- ---- staff: who acts -------------------------------------------------------------
SET SESSION AUTHORIZATION r_alice;
SELECT is(contactlog.current_actor(), 301::bigint,
          'staff: the acting employee is the one whose login is session_user');
SELECT is(contactlog.current_actor(301), 301::bigint, 'staff: naming oneself is fine');
SELECT throws_ok('SELECT contactlog.current_actor(302)', '42501',
                 'login r_alice acts as Alice Archer (r_alice) and may not act as Bob Baker (r_bob)',
                 'staff: naming another employee is refused');

-- ---- staff: take -----------------------------------------------------------------------
SELECT throws_ok('SELECT contactlog.take(3002)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'take, staff: refused on a log locked by someone else, naming the owner');
SELECT throws_ok('SELECT contactlog.take(3004)', '42501', 'contact log 3004 is completed',
                 'take, staff: refused on a completed log');
SELECT throws_ok('SELECT contactlog.take(3003, 302)', '42501',
                 'login r_alice acts as Alice Archer (r_alice) and may not act as Bob Baker (r_bob)',
                 'take, staff: naming another actor (actor_id) is refused');
SELECT throws_ok('SELECT contactlog.take(3002, 303)', '42501',
                 'login r_alice acts as Alice Archer (r_alice) and may not act as Dora Admin (r_dora)',
                 'take, staff: naming an admin (actor_id) to take over is refused');
SET LOCAL contactlog.actor = '303';
SELECT throws_ok('SELECT contactlog.take(3002)', '42501',
                 'login r_alice acts as Alice Archer (r_alice) and may not act as Dora Admin (r_dora)',
                 'take, staff: naming an admin in contactlog.actor is refused');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3002$$, '42501',
                 'login r_alice acts as Alice Archer (r_alice) and may not act as Dora Admin (r_dora)',
                 'UPDATE, staff: naming another actor in contactlog.actor is refused');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3001$$, '42501',
                 'login r_alice acts as Alice Archer (r_alice) and may not act as Dora Admin (r_dora)',
                 'UPDATE, staff: even on its own log, while naming someone else');
SET LOCAL contactlog.actor = '301';
SELECT is(pg_temp.state((contactlog.take(3003)).id), 'in_progress/301/-',
          'take, staff: an open log (contactlog.actor naming oneself is fine)');
SET LOCAL contactlog.actor = '';
SELECT is(pg_temp.state((contactlog.take(3005, 301)).id), 'in_progress/301/-',
          'take, staff: an open log (actor_id naming oneself is fine)');
SELECT is(pg_temp.state(3002), 'in_progress/302/-', 'take, staff: the refused takes changed nothing');

-- ---- staff: surrender, assign, complete --------------------------------------------------
SELECT throws_ok('SELECT contactlog.surrender(3002)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'surrender, staff: refused for a non-owner, naming the owner');
SELECT throws_ok('SELECT contactlog.surrender(3009)', '42501',
                 'contact log 3009 is open (locked by nobody)', 'surrender, staff: refused on an open log');
SELECT is(pg_temp.state((contactlog.surrender(3005)).id), 'open/-/-', 'surrender, staff: the owner');

SELECT throws_ok('SELECT contactlog.assign(3002, NULL, 301)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'assign, staff: refused on a log locked by someone else, naming the owner');
SELECT throws_ok('SELECT contactlog.assign(3004, NULL, 301)', '42501', 'contact log 3004 is completed',
                 'assign, staff: refused on a completed log');
SELECT throws_ok('SELECT contactlog.assign(3009, 302, 302)', '42501',
                 'login r_alice acts as Alice Archer (r_alice) and may not act as Bob Baker (r_bob)',
                 'assign, staff: naming another actor is refused');
SELECT is(pg_temp.state((contactlog.assign(3005, NULL, 302)).id), 'in_progress/302/302',
          'assign, staff: anyone assigns an open log');
SELECT is(pg_temp.state((contactlog.assign(3003, NULL, 302)).id), 'in_progress/302/302',
          'assign, staff: the owner hands a log over');

SELECT throws_ok('SELECT contactlog.complete(3002)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'complete, staff: refused for a non-owner, naming the owner');
SELECT throws_ok('SELECT contactlog.complete(3004)', '42501', 'contact log 3004 is completed',
                 'complete, staff: refused on a completed log');
SELECT is(pg_temp.state((contactlog.complete(3006)).id), 'completed/-/-', 'complete, staff: the owner');

-- ---- staff: plain UPDATE, DELETE, INSERT -------------------------------------------------
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'by alice', reason = 'visit' WHERE id = 3001$$,
                'UPDATE, staff: the owner changes its log');
SELECT is((SELECT notes FROM contactlog.contact_log WHERE id = 3001), 'by alice', 'UPDATE, staff: the change is there');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'by alice' WHERE id = 3002$$, '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'UPDATE, staff: refused on someone else''s log, naming the owner');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3009$$, '42501',
                 'contact log 3009 is open (locked by nobody)', 'UPDATE, staff: refused on an open log');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3004$$, '42501',
                 'contact log 3004 is completed', 'UPDATE, staff: refused on a completed log (its creator)');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id IN (3001, 3002)$$, '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'UPDATE, staff: one foreign log refuses the whole statement');
SELECT is((SELECT notes FROM contactlog.contact_log WHERE id = 3001), 'by alice',
          'UPDATE, staff: the refused statement changed nothing, its own log neither');
SELECT throws_ok($$UPDATE contactlog.contact_log SET owner_id = 301 WHERE id = 3002$$, '42501',
                 'permission denied for table contact_log', 'UPDATE, staff: owner_id is not writable');
SELECT throws_ok($$UPDATE contactlog.contact_log SET status = 'open', owner_id = NULL WHERE id = 3001$$,
                 '42501', 'permission denied for table contact_log',
                 'UPDATE, staff: status is not writable (locks move through the functions)');
SELECT throws_ok($$UPDATE contactlog.contact_log SET created_by = 302 WHERE id = 3001$$, '42501',
                 'permission denied for table contact_log',
                 'UPDATE, staff: created_by is not writable (it picks the mailbox)');

SELECT throws_ok('DELETE FROM contactlog.contact_log WHERE id = 3002', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)', 'DELETE, staff: refused for a non-owner');
SELECT lives_ok('DELETE FROM contactlog.contact_log WHERE id = 3008', 'DELETE, staff: the owner');
SELECT is((SELECT count(*)::int FROM contactlog.contact_log WHERE id IN (3002, 3008)), 1,
          'DELETE, staff: only the owner''s delete happened');

SELECT lives_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name, next_contact_at)
                  VALUES (301, 'Mine', '2030-02-01 09:00+00')$$, 'INSERT, staff: a log of its own');
SELECT is(pg_temp.state((SELECT id FROM contactlog.contact_log WHERE contact_name = 'Mine')),
          'in_progress/301/-', 'INSERT, staff: locked by itself');
SELECT lives_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name, status)
                  VALUES (301, 'Mine, open', 'open')$$, 'INSERT, staff: an open log of its own');
SELECT throws_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name) VALUES (302, 'Forged')$$,
                 '42501', 'Alice Archer (r_alice) may not create a contact log as Bob Baker (r_bob)',
                 'INSERT, staff: created_by someone else is refused');
SELECT throws_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name, owner_id)
                   VALUES (301, 'Forged', 302)$$,
                 '42501', 'Alice Archer (r_alice) may not create a contact log as Bob Baker (r_bob)',
                 'INSERT, staff: owner someone else is refused');
SELECT throws_ok($$INSERT INTO contactlog.contact_log (id, created_by, contact_name) VALUES (3099, 301, 'Forged')$$,
                 '42501', 'permission denied for table contact_log', 'INSERT, staff: ids are not chosen');
SELECT is((SELECT count(*)::int FROM contactlog.contact_log WHERE contact_name = 'Forged'), 0,
          'INSERT, staff: nothing forged was stored');

-- ---- staff: reads ----------------------------------------------------------------------
SELECT ok((SELECT count(*) FROM contactlog.contact_log) > 0, 'reads, staff: contact_log');
SELECT ok((SELECT count(*) FROM contactlog.open_follow_ups) > 0, 'reads, staff: open_follow_ups');
SELECT ok((SELECT badge FROM contactlog.summary) IS NOT NULL, 'reads, staff: summary');
SELECT is((SELECT DISTINCT total_count FROM contactlog.list_logs(sort => 'priority')),
          (SELECT count(*) FROM contactlog.contact_log), 'reads, staff: list_logs');

-- ---- staff: what it may not touch ----------------------------------------------------------
SELECT throws_ok($$INSERT INTO contactlog.outlook_sync (contact_log_id) VALUES (3002)$$, '42501',
                 'permission denied for table outlook_sync', 'staff may not write outlook_sync');
SELECT throws_ok('DELETE FROM contactlog.outlook_sync', '42501',
                 'permission denied for table outlook_sync', 'staff may not delete from outlook_sync');
SELECT throws_ok($$UPDATE contactlog.outlook_item SET item_id = NULL$$, '42501',
                 'permission denied for table outlook_item', 'staff may not write outlook_item');
SELECT throws_ok($$UPDATE contactlog.attribute SET value = '0' WHERE name = 'AddToCalendar'$$, '42501',
                 'permission denied for table attribute', 'staff may not change attributes');
SELECT throws_ok($$INSERT INTO contactlog.attribute VALUES ('SyncFromOutlook', '1')$$, '42501',
                 'permission denied for table attribute', 'staff may not add attributes');
SELECT throws_ok($$UPDATE contactlog.employee SET role = 'admin' WHERE id = 301$$, '42501',
                 'permission denied for table employee', 'staff may not make itself an admin');
SELECT throws_ok($$INSERT INTO contactlog.contact_log_tally VALUES ('open', NULL, false, false, 5)$$, '42501',
                 'permission denied for table contact_log_tally', 'staff may not write the counts');
SELECT throws_ok('SELECT contactlog.lock_log(3002)', '42501',
                 'permission denied for function lock_log', 'staff may not call the helpers');
SELECT throws_ok('SELECT contactlog.recount_logs()', '42501',
                 'permission denied for function recount_logs', 'staff may not run maintenance');
SELECT throws_ok('SELECT contactlog.followupd_requeue_failed()', '42501',
                 'permission denied for function followupd_requeue_failed',
                 'staff may not call followupd''s functions');
SELECT throws_ok('SET session_replication_role = replica', '42501',
                 'permission denied to set parameter "session_replication_role"',
                 'staff may not switch triggers off');
SELECT throws_ok('ALTER TABLE contactlog.contact_log DISABLE TRIGGER contact_log_ownership', '42501',
                 'must be owner of table contact_log', 'staff may not drop the ownership trigger');

-- ---- staff without an employee, inactive staff -------------------------------------------
SET SESSION AUTHORIZATION r_stranger;
SELECT throws_ok('SELECT contactlog.take(3009)', '42501',
                 'login r_stranger is not an employee and may not change contact logs',
                 'staff login without an employee: take refused');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3009$$, '42501',
                 'login r_stranger is not an employee and may not change contact logs',
                 'staff login without an employee: UPDATE refused');
SELECT throws_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name) VALUES (301, 'x')$$, '42501',
                 'login r_stranger is not an employee and may not change contact logs',
                 'staff login without an employee: INSERT refused');
SET SESSION AUTHORIZATION r_ed;
SELECT throws_ok('SELECT contactlog.take(3009)', '42501',
                 'employee Ed Gone (r_ed) is inactive and may not change contact logs',
                 'inactive staff: take refused');

-- ---- an administrator among staff ------------------------------------------------------
-- Now: 3002 bob's, 3003 and 3005 bob's (assigned), 3004 completed, 3007 bob's, 3009 open.
SET SESSION AUTHORIZATION r_dora;
SELECT throws_ok('SELECT contactlog.surrender(3002)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'surrender, admin: refused for someone else''s log');
SELECT throws_ok('SELECT contactlog.complete(3002)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'complete, admin: refused for someone else''s log');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3002$$, '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'UPDATE, admin: refused on a log locked by someone else (take it over first)');
SELECT is(pg_temp.state((contactlog.take(3007)).id), 'in_progress/303/-',
          'take, admin: forced takeover of a log locked by someone else');
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'checked' WHERE id = 3004$$,
                'UPDATE, admin: changes a completed log');
SELECT is(pg_temp.state((contactlog.assign(3005, NULL, 301)).id), 'in_progress/301/301',
          'assign, admin: a log locked by someone else');
SELECT is(pg_temp.state((contactlog.assign(3004, NULL, 302)).id), 'in_progress/302/302',
          'assign, admin: reopens a completed log');

-- ---- app: a trusted front end names the actor ------------------------------------------
-- Now: 3001 alice's, 3002 bob's, 3003 bob's, 3004 bob's, 3005 alice's, 3007 dora's, 3009 open.
SET SESSION AUTHORIZATION r_app;
SELECT throws_ok('SELECT contactlog.take(3009)', '42501',
                 'no acting employee named: login r_app may not change contact logs without one',
                 'app, no actor: take refused');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3002$$, '42501',
                 'no acting employee named: login r_app may not change contact logs without one',
                 'app, no actor: UPDATE refused');
SELECT throws_ok('DELETE FROM contactlog.contact_log WHERE id = 3002', '42501',
                 'no acting employee named: login r_app may not change contact logs without one',
                 'app, no actor: DELETE refused');
SELECT throws_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name) VALUES (302, 'x')$$, '42501',
                 'no acting employee named: login r_app may not change contact logs without one',
                 'app, no actor: INSERT refused');
SELECT throws_ok('SELECT contactlog.complete(3002)', '42501',
                 'no acting employee named: login r_app may not change contact logs without one',
                 'app, no actor: complete refused');
SELECT is(pg_temp.state(3002), 'in_progress/302/-', 'app, no actor: nothing changed');

SET LOCAL contactlog.actor = '302';
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'by bob' WHERE id = 3002$$,
                'app, actor bob (setting): bob''s log changes');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'by bob' WHERE id = 3001$$, '42501',
                 'contact log 3001 is locked by Alice Archer (r_alice)',
                 'app, actor bob (setting): alice''s log is refused, naming her');
SELECT is(pg_temp.state((contactlog.take(3009)).id), 'in_progress/302/-',
          'take, app: actor from the setting');
SELECT throws_ok('SELECT contactlog.take(3009, 301)', '42501',
                 'actor_id 301 and contactlog.actor 302 name different employees',
                 'app: actor_id and contactlog.actor disagreeing is refused');
SELECT throws_ok($$UPDATE contactlog.contact_log SET status = 'open' WHERE id = 3002$$, '42501',
                 'permission denied for table contact_log', 'app: status is not writable either');
SET LOCAL contactlog.actor = '';
SELECT is(pg_temp.state((contactlog.surrender(3009, 302)).id), 'open/-/-',
          'surrender, app: actor from actor_id');
SELECT throws_ok('SELECT contactlog.take(3002, 301)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'take, app: the rules hold for the actor named');
SELECT throws_ok('SELECT contactlog.complete(3002, 301)', '42501',
                 'contact log 3002 is locked by Bob Baker (r_bob)',
                 'complete, app: the rules hold for the actor named');
SELECT is(pg_temp.state((contactlog.take(3002, 303)).id), 'in_progress/303/-',
          'take, app: an admin named takes over');
SELECT is(pg_temp.state((contactlog.assign(3002, 303, 301)).id), 'in_progress/301/301',
          'assign, app: the owner named hands over');
SELECT is(pg_temp.state((contactlog.complete(3002, 301)).id), 'completed/-/301',
          'complete, app: the owner named');
SET LOCAL contactlog.actor = '302';
SELECT lives_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name) VALUES (301, 'For alice')$$,
                'INSERT, app: a trusted front end records a log for someone');
SELECT throws_ok($$INSERT INTO contactlog.outlook_sync (contact_log_id) VALUES (3002)$$, '42501',
                 'permission denied for table outlook_sync', 'app may not write outlook_sync');
SELECT throws_ok($$UPDATE contactlog.outlook_item SET item_id = NULL$$, '42501',
                 'permission denied for table outlook_item', 'app may not write outlook_item');
SELECT throws_ok($$UPDATE contactlog.attribute SET value = '0' WHERE name = 'AddToCalendar'$$, '42501',
                 'permission denied for table attribute', 'app may not change attributes');
SELECT throws_ok('SELECT contactlog.followupd_resync(3002)', '42501',
                 'permission denied for function followupd_resync',
                 'app may not call followupd''s functions');
SET LOCAL contactlog.actor = '';

-- ---- the daemon's role -----------------------------------------------------------------
SET SESSION AUTHORIZATION r_daemon;
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3001$$, '42501',
                 'permission denied for table contact_log', 'daemon: may not UPDATE a log');
SELECT throws_ok($$INSERT INTO contactlog.contact_log (created_by, contact_name) VALUES (301, 'x')$$, '42501',
                 'permission denied for table contact_log', 'daemon: may not INSERT a log');
SELECT throws_ok('DELETE FROM contactlog.contact_log WHERE id = 3001', '42501',
                 'permission denied for table contact_log', 'daemon: may not DELETE a log');
SELECT throws_ok('SELECT contactlog.take(3009, 301)', '42501', 'permission denied for function take',
                 'daemon: may not call the ownership functions');
SELECT throws_ok($$UPDATE contactlog.attribute SET value = '0' WHERE name = 'AddToCalendar'$$, '42501',
                 'permission denied for table attribute', 'daemon: may not change attributes');
SELECT lives_ok('SELECT * FROM contactlog.effective_attribute', 'daemon: reads effective_attribute');
SELECT lives_ok('SELECT * FROM contactlog.followupd_status', 'daemon: reads followupd_status');

-- ---- the attributes' administrators ------------------------------------------------------
SET SESSION AUTHORIZATION r_admin;
SELECT lives_ok($$UPDATE contactlog.attribute SET value = '0' WHERE name = 'AddToCalendar'$$,
                'contactlog_admin: changes attributes');
SELECT lives_ok('SELECT * FROM contactlog.effective_attribute', 'contactlog_admin: reads effective_attribute');
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3001$$, '42501',
                 'permission denied for table contact_log', 'contactlog_admin: no privilege on logs');

-- ---- maintenance ---------------------------------------------------------------------------
RESET SESSION AUTHORIZATION;
SELECT lives_ok($$UPDATE contactlog.contact_log SET status = 'completed', owner_id = NULL WHERE id = 3005$$,
                'maintenance (superuser, no actor): any change, no ownership check');

-- ---- a hostile search_path ------------------------------------------------------------------
-- Alice owns a schema "evil" whose objects are named like built-ins our code
-- uses, each raising "hijacked"; pg_temp holds a table named like ours. With
-- evil before pg_catalog, unqualified names in code that does not fix its
-- search_path would find them (the first two tests show the trap works).
CREATE SCHEMA evil AUTHORIZATION r_alice;
SET SESSION AUTHORIZATION r_alice;
CREATE FUNCTION evil.hijacked() RETURNS boolean LANGUAGE plpgsql AS
    $$BEGIN RAISE EXCEPTION 'hijacked'; END$$;
CREATE FUNCTION evil.pg_has_role(name, text, text) RETURNS boolean LANGUAGE sql AS 'SELECT evil.hijacked()';
CREATE FUNCTION evil.pg_has_role(name, oid, text) RETURNS boolean LANGUAGE sql AS 'SELECT evil.hijacked()';
CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql AS 'SELECT evil.hijacked()::text';
CREATE FUNCTION evil.btrim(text) RETURNS text LANGUAGE sql AS 'SELECT evil.hijacked()::text';
CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS 'SELECT evil.hijacked()::text';
CREATE FUNCTION evil.quote_ident(text) RETURNS text LANGUAGE sql AS 'SELECT evil.hijacked()::text';
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT evil.hijacked()::text::timestamptz';
CREATE FUNCTION evil.text_eq(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT evil.hijacked()';
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
CREATE TEMP TABLE employee AS SELECT 303::bigint AS id, 'r_alice'::text AS login, 'admin'::text AS role;
-- Runs sql with that search_path; 'ok: <first column>' or '<SQLSTATE> <message>'.
-- Written not to call anything evil shadows itself.
CREATE FUNCTION pg_temp.hostile(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    saved  constant text := pg_catalog.current_setting('search_path');
    result text;
    code   text;
    msg    text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'evil, pg_catalog, contactlog', true);
    BEGIN
        EXECUTE sql INTO result;
        result := 'ok: ' OPERATOR(pg_catalog.||) coalesce(result, 'NULL');
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        result := code OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) msg;
    END;
    PERFORM pg_catalog.set_config('search_path', saved, true);
    RETURN result;
END
$$;

SELECT is(pg_temp.hostile($$SELECT 'a'::text = 'a'::text$$), 'P0001 hijacked',
          'hostile search_path: the trap works (an unqualified = is evil''s)');
SELECT is(pg_temp.hostile($$SELECT lower('A')$$), 'P0001 hijacked',
          'hostile search_path: the trap works (an unqualified lower() is evil''s)');
SELECT is(pg_temp.hostile('SELECT contactlog.current_actor()'), 'ok: 301',
          'hostile search_path: current_actor is not hijacked');
SELECT is(pg_temp.hostile('SELECT contactlog.take(3007)'),
          '42501 contact log 3007 is locked by Dora Admin (r_dora)',
          'hostile search_path: take still refuses a log locked by someone else');
SELECT is(pg_temp.hostile($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3007 RETURNING id$$),
          '42501 contact log 3007 is locked by Dora Admin (r_dora)',
          'hostile search_path: the ownership trigger still refuses');
SELECT is(pg_temp.hostile($$INSERT INTO contactlog.contact_log (created_by, contact_name) VALUES (302, 'x') RETURNING id$$),
          '42501 Alice Archer (r_alice) may not create a contact log as Bob Baker (r_bob)',
          'hostile search_path: the INSERT check still refuses');
SELECT matches(pg_temp.hostile($$INSERT INTO contactlog.contact_log (created_by, contact_name, priority, next_contact_at)
                                 VALUES (301, 'Evil day', 'low', '2030-05-01 09:00+00') RETURNING id$$),
               '^ok: [0-9]+$',
               'hostile search_path: an INSERT runs every trigger and index expression unhijacked');
SELECT is(pg_temp.hostile($$SELECT contactlog.priority_rank('low')$$), 'ok: 0',
          'hostile search_path: priority_rank (the sort index''s expression) is bound to pg_catalog');
SELECT is(pg_temp.hostile($$SELECT (contactlog.surrender(3001)).status$$), 'ok: open',
          'hostile search_path: surrender works for the owner');
SELECT matches(pg_temp.hostile($$SELECT count(*) FROM contactlog.list_logs(sort => 'priority', owner_search => 'a')$$),
               '^ok: [0-9]+$', 'hostile search_path: list_logs is not hijacked');
SELECT matches(pg_temp.hostile('SELECT count(*) FROM contactlog.open_follow_ups'), '^ok: [0-9]+$',
               'hostile search_path: open_follow_ups is not hijacked');
RESET SESSION AUTHORIZATION;
SELECT is(pg_temp.state(3007), 'in_progress/303/-', 'hostile search_path: Dora''s log is still hers');

-- ---- a role outside the model ------------------------------------------------------------
-- Privileges an operator granted directly (as the operator guide said before issue
-- 14) keep working as before: checked when the session names an actor, not
-- otherwise. followupctl migrate never revokes them; it warns about those on
-- followupd's tables.
GRANT USAGE ON SCHEMA contactlog TO r_legacy;
GRANT SELECT, UPDATE ON contactlog.contact_log TO r_legacy;
SET SESSION AUTHORIZATION r_legacy;
SET LOCAL contactlog.actor = '301';
SELECT throws_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3007$$, '42501',
                 'contact log 3007 is locked by Dora Admin (r_dora)',
                 'a role outside the model naming an actor is checked');
SET LOCAL contactlog.actor = '';
SELECT lives_ok($$UPDATE contactlog.contact_log SET notes = 'x' WHERE id = 3007$$,
                'a role outside the model naming nobody is not (its grants are the operator''s)');
RESET SESSION AUTHORIZATION;

-- ---- a read of the grants -------------------------------------------------------------------
SELECT is(ARRAY(SELECT r.rolname || ' ' || r.rolcanlogin FROM pg_roles r
                WHERE r.rolname LIKE 'contactlog\_%' ORDER BY 1),
          ARRAY['contactlog_admin false', 'contactlog_app false', 'contactlog_daemon false',
                'contactlog_staff false'],
          'the four group roles exist, NOLOGIN');

CREATE TEMP TABLE fn ON COMMIT DROP AS
SELECT p.oid, p.proname, p.prosecdef, p.proconfig
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'contactlog';

SELECT is(ARRAY(SELECT proname FROM fn WHERE prosecdef
                  AND NOT coalesce(proconfig @> ARRAY['search_path=pg_catalog, contactlog, pg_temp'], false)
                ORDER BY 1),
          '{}'::name[], 'every SECURITY DEFINER function fixes search_path = pg_catalog, contactlog, pg_temp');
SELECT is(ARRAY(SELECT proname FROM fn
                WHERE (proname LIKE 'followupd\_%'
                       OR proname IN ('take', 'surrender', 'assign', 'complete', 'current_actor',
                                      'acting_employee', 'lock_log', 'refuse', 'list_logs',
                                      'outlook_mark_dirty', 'contact_log_check_owner',
                                      'contact_log_defaults', 'contact_log_tally_track',
                                      'contact_log_tally_add', 'contact_log_tally_clear'))
                  AND NOT prosecdef ORDER BY 1),
          '{}'::name[], 'the rules, the triggers, the read side and followupd''s functions are SECURITY DEFINER');
SELECT is(ARRAY(SELECT DISTINCT proname FROM fn WHERE has_function_privilege('contactlog_staff', oid, 'EXECUTE')
                ORDER BY 1),
          ARRAY['assign', 'complete', 'current_actor', 'is_maintenance_role', 'list_logs',
                'priority_rank', 'surrender', 'take']::name[],
          'staff may execute the rules and the read side, and nothing else');
SELECT is(ARRAY(SELECT DISTINCT proname FROM fn WHERE has_function_privilege('contactlog_app', oid, 'EXECUTE')
                ORDER BY 1),
          ARRAY['assign', 'complete', 'current_actor', 'is_maintenance_role', 'list_logs',
                'priority_rank', 'surrender', 'take']::name[],
          'app may execute the rules and the read side, and nothing else');
SELECT is(ARRAY(SELECT DISTINCT proname FROM fn WHERE has_function_privilege('contactlog_daemon', oid, 'EXECUTE')
                  AND proname NOT LIKE 'followupd\_%' ORDER BY 1),
          ARRAY['is_maintenance_role', 'priority_rank']::name[],
          'the daemon may execute followupd''s functions, and nothing else but the two harmless ones');
SELECT is(ARRAY(SELECT proname FROM fn WHERE proname LIKE 'followupd\_%'
                  AND NOT has_function_privilege('contactlog_daemon', oid, 'EXECUTE') ORDER BY 1),
          '{}'::name[], 'the daemon may execute every followupd_* function');

-- Who may write which relation of the schema (table, or any column of it).
CREATE FUNCTION pg_temp.writable_by(role_name text) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(DISTINCT c.relname || ':' || w.privilege ORDER BY c.relname || ':' || w.privilege),
                    '{}')
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) w(privilege)
    WHERE n.nspname = 'contactlog' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND (has_table_privilege(role_name, c.oid, w.privilege)
           OR (w.privilege IN ('INSERT', 'UPDATE')
               AND has_any_column_privilege(role_name, c.oid, w.privilege)))
$$;
SELECT is(pg_temp.writable_by('contactlog_staff'),
          ARRAY['contact_log:DELETE', 'contact_log:INSERT', 'contact_log:UPDATE'],
          'staff may write contact_log (through the rules) and nothing else');
SELECT is(pg_temp.writable_by('contactlog_app'),
          ARRAY['contact_log:DELETE', 'contact_log:INSERT', 'contact_log:UPDATE'],
          'app may write contact_log (through the rules) and nothing else');
SELECT is(pg_temp.writable_by('contactlog_daemon'), '{}'::text[], 'the daemon may write no relation');
SELECT is(pg_temp.writable_by('contactlog_admin'),
          ARRAY['attribute:DELETE', 'attribute:INSERT', 'attribute:UPDATE'],
          'contactlog_admin may write attribute and nothing else');
SELECT is(ARRAY(SELECT a.attname::text FROM pg_attribute a
                WHERE a.attrelid = 'contactlog.contact_log'::regclass AND a.attnum > 0
                  AND has_column_privilege('contactlog_staff', a.attrelid, a.attnum, 'UPDATE')
                ORDER BY a.attnum),
          ARRAY['contact_name', 'notes', 'priority', 'assigned_to', 'forward_to', 'reason', 'next_contact_at'],
          'staff may UPDATE the log''s content columns only (not id, created_by, times, status, owner_id)');
SELECT is(ARRAY(SELECT c.relname::text || ' ' || r.rolname FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                CROSS JOIN (VALUES ('contactlog_staff'), ('contactlog_app'), ('contactlog_daemon'),
                                   ('contactlog_admin')) r(rolname)
                WHERE n.nspname = 'contactlog' AND c.relkind = 'S'
                  AND has_sequence_privilege(r.rolname, c.oid, 'USAGE, UPDATE')
                ORDER BY 1),
          '{}'::text[], 'no group role may use or set a sequence');
SELECT ok(NOT has_schema_privilege('contactlog_staff', 'contactlog', 'CREATE')
          AND NOT has_schema_privilege('contactlog_app', 'contactlog', 'CREATE')
          AND NOT has_schema_privilege('contactlog_daemon', 'contactlog', 'CREATE'),
          'no group role may create objects in contactlog');

SELECT * FROM finish();
ROLLBACK;
