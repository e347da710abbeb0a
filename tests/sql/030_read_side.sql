-- The read side (issue 5, SPEC §2): contactlog.list_logs (filters, sorts, pages,
-- owner search taken literally, total count), contactlog.open_follow_ups and
-- contactlog.summary after a scripted day of work.
BEGIN;
SELECT plan(127);

SET LOCAL contactlog.actor = '';
DELETE FROM contactlog.contact_log;   -- whatever earlier files left (they roll back)

-- Names that sort alike in every collation (distinct first capitals) and that
-- carry LIKE wildcards, quotes and SQL.
INSERT INTO contactlog.employee (id, login, display_name, role) VALUES
    (201, 'alice',  'Alice Archer',                  'staff'),
    (202, 'bob',    'Bob Baker',                     'staff'),
    (203, 'carol',  'Carol 100% Clerk',              'staff'),
    (204, 'dan',    'Dan_Under',                     'staff'),
    (205, 'pat',    'Pat O''Brien',                  'staff'),
    (206, 'bobby',  'Robert''); DROP TABLE x; --',   'staff'),
    (207, 'dora',   'Dora Admin',                    'admin'),
    (208, 'zoe',    'Zoe ALICIA',                    'staff');
CREATE TABLE x (i int);   -- what a successful injection would drop

INSERT INTO contactlog.contact_log
    (id, created_by, created_at, contact_name, status, owner_id, priority, next_contact_at) VALUES
    (2001, 201, '2030-01-01 10:00+00', 'Zed', 'in_progress', 201, 'normal', '2030-02-05 09:00+00'),
    (2002, 202, '2030-01-02 10:00+00', 'Amy', 'in_progress', 202, 'high',   NULL),
    (2003, 203, '2030-01-03 10:00+00', 'Mia', 'open',        NULL, 'low',   '2030-02-01 09:00+00'),
    (2004, 204, '2030-01-04 10:00+00', 'Bea', 'completed',   NULL, 'high',  '2030-02-02 09:00+00'),
    (2005, 205, '2030-01-05 10:00+00', 'Cid', 'in_progress', 205, 'low',    '2030-02-03 09:00+00'),
    (2006, 206, '2030-01-05 10:00+00', 'Cid', 'in_progress', 206, 'normal', NULL),
    (2007, 201, '2030-01-07 10:00+00', 'Eve', 'in_progress', 201, 'normal', NULL),
    (2008, 203, '2030-01-08 10:00+00', 'Flo', 'in_progress', 203, 'high',   '2030-02-04 09:00+00'),
    (2009, 204, '2030-01-09 10:00+00', 'Gus', 'in_progress', 204, 'normal', '2030-02-01 09:00+00'),
    (2010, 208, '2030-01-10 10:00+00', 'Hal', 'in_progress', 208, 'low',    '2030-02-06 09:00+00'),
    (2011, 202, '2030-01-11 10:00+00', 'Ivy', 'completed',   NULL, 'normal', NULL),
    (2012, 207, '2030-01-12 10:00+00', 'Jon', 'open',        NULL, 'high',  '2030-02-07 09:00+00');

-- All ids of one listing (one big page), and the same read page by page.
CREATE FUNCTION pg_temp.ids(sort text, descending boolean, status text DEFAULT NULL,
                            owner_search text DEFAULT NULL) RETURNS bigint[] LANGUAGE sql AS
    $$SELECT ARRAY(SELECT id FROM contactlog.list_logs(status, owner_search, sort, descending, 1, 1000))$$;
CREATE FUNCTION pg_temp.paged(sort text, descending boolean, size int, status text DEFAULT NULL,
                              owner_search text DEFAULT NULL) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    result bigint[] := '{}';
    chunk  bigint[];
    p      int := 1;
BEGIN
    LOOP
        chunk := ARRAY(SELECT id FROM contactlog.list_logs(status, owner_search, sort, descending, p, size));
        EXIT WHEN cardinality(chunk) = 0;
        result := result || chunk;
        p := p + 1;
    END LOOP;
    RETURN result;
END
$$;

-- ---- shape ------------------------------------------------------------------------
SELECT has_function('contactlog', 'list_logs',
                    ARRAY['text', 'text', 'text', 'boolean', 'integer', 'integer'], 'list_logs(...)');
SELECT has_view('contactlog', 'open_follow_ups', 'open_follow_ups view');
SELECT has_view('contactlog', 'summary', 'summary view');
SELECT columns_are('contactlog', 'summary', ARRAY['open', 'in_progress', 'completed', 'open_follow_ups', 'badge'],
                   'summary: open, in_progress, completed, open_follow_ups, badge');
SELECT has_column('contactlog', 'open_follow_ups', 'log_id', 'open_follow_ups.log_id');
SELECT has_column('contactlog', 'open_follow_ups', 'contact_name', 'open_follow_ups.contact_name');
SELECT has_column('contactlog', 'open_follow_ups', 'owner_name', 'open_follow_ups.owner_name');
SELECT has_column('contactlog', 'open_follow_ups', 'next_contact_at', 'open_follow_ups.next_contact_at');
SELECT has_column('contactlog', 'open_follow_ups', 'reason', 'open_follow_ups.reason');
SELECT has_column('contactlog', 'open_follow_ups', 'priority', 'open_follow_ups.priority');

-- ---- defaults, pages, total ---------------------------------------------------------
SELECT is(ARRAY(SELECT id FROM contactlog.list_logs()),
          ARRAY[2012, 2011, 2010, 2009, 2008, 2007, 2006, 2005, 2004, 2003]::bigint[],
          'default: newest first, 10 rows, a tie on created_at broken by id');
SELECT is(ARRAY(SELECT DISTINCT total_count FROM contactlog.list_logs()), ARRAY[12]::bigint[],
          'default: total_count 12 on every row');
SELECT is(ARRAY(SELECT id FROM contactlog.list_logs(page => 2)), ARRAY[2002, 2001]::bigint[],
          'page 2: the last two');
SELECT is(ARRAY(SELECT DISTINCT total_count FROM contactlog.list_logs(page => 2)), ARRAY[12]::bigint[],
          'page 2: same total');
SELECT is((SELECT count(*)::int FROM contactlog.list_logs(page => 3)), 0, 'page 3: empty, no error');
SELECT is(ARRAY(SELECT id FROM contactlog.list_logs(page => 3, page_size => 5)), ARRAY[2002, 2001]::bigint[],
          'page_size 5, page 3');
SELECT is((SELECT count(*)::int FROM contactlog.list_logs(page => 2147483647, page_size => 1000)), 0,
          'a huge page number is just past the end');
SELECT is((SELECT row(l.id, l.created_by, l.created_by_name, l.contact_name, l.status, l.owner_id,
                      l.owner_name, l.priority, l.next_contact_at)::text
           FROM contactlog.list_logs(sort => 'created_at', descending => false, page_size => 1) l),
          row(2001::bigint, 201::bigint, 'Alice Archer', 'Zed', 'in_progress', 201::bigint, 'Alice Archer',
              'normal', '2030-02-05 09:00+00'::timestamptz)::text,
          'a row carries the log with creator and owner names');

-- ---- sorts, both directions -----------------------------------------------------------
SELECT is(pg_temp.ids('created_at', false),
          ARRAY[2001, 2002, 2003, 2004, 2005, 2006, 2007, 2008, 2009, 2010, 2011, 2012]::bigint[],
          'sort created_at ascending');
SELECT is(pg_temp.ids('contact_name', false),
          ARRAY[2002, 2004, 2005, 2006, 2007, 2008, 2009, 2010, 2011, 2012, 2003, 2001]::bigint[],
          'sort contact_name ascending (tie by id)');
SELECT is(pg_temp.ids('contact_name', true),
          ARRAY[2001, 2003, 2012, 2011, 2010, 2009, 2008, 2007, 2006, 2005, 2004, 2002]::bigint[],
          'sort contact_name descending (tie by id, descending)');
SELECT is(pg_temp.ids('next_contact_at', false),
          ARRAY[2003, 2009, 2004, 2005, 2008, 2001, 2010, 2012, 2002, 2006, 2007, 2011]::bigint[],
          'sort next_contact_at ascending, logs without a follow-up last');
SELECT is(pg_temp.ids('next_contact_at', true),
          ARRAY[2012, 2010, 2001, 2008, 2005, 2004, 2009, 2003, 2011, 2007, 2006, 2002]::bigint[],
          'sort next_contact_at descending, logs without a follow-up still last');
SELECT is(pg_temp.ids('owner', false),
          ARRAY[2001, 2007, 2002, 2008, 2009, 2005, 2006, 2010, 2003, 2004, 2011, 2012]::bigint[],
          'sort owner ascending: by owner name, unowned logs last');
SELECT is(pg_temp.ids('owner', true),
          ARRAY[2010, 2006, 2005, 2009, 2008, 2002, 2007, 2001, 2012, 2011, 2004, 2003]::bigint[],
          'sort owner descending: unowned logs still last');
SELECT is(pg_temp.ids('status', false),
          ARRAY[2003, 2012, 2001, 2002, 2005, 2006, 2007, 2008, 2009, 2010, 2004, 2011]::bigint[],
          'sort status ascending: open, in progress, completed');
SELECT is(pg_temp.ids('status', true),
          ARRAY[2011, 2004, 2010, 2009, 2008, 2007, 2006, 2005, 2002, 2001, 2012, 2003]::bigint[],
          'sort status descending');
SELECT is(pg_temp.ids('priority', false),
          ARRAY[2003, 2005, 2010, 2001, 2006, 2007, 2009, 2011, 2002, 2004, 2008, 2012]::bigint[],
          'sort priority ascending: low, normal, high');
SELECT is(pg_temp.ids('priority', true),
          ARRAY[2012, 2008, 2004, 2002, 2011, 2009, 2007, 2006, 2001, 2010, 2005, 2003]::bigint[],
          'sort priority descending: high first');

-- Reading page by page gives the same list, also across the "no value" boundary.
SELECT is(pg_temp.paged(s.sort, d.descending, 3), pg_temp.ids(s.sort, d.descending),
          format('sort %s %s: pages of 3 add up to the whole list', s.sort,
                 CASE WHEN d.descending THEN 'descending' ELSE 'ascending' END))
FROM unnest(ARRAY['created_at', 'next_contact_at', 'contact_name', 'owner', 'status', 'priority'])
     WITH ORDINALITY AS s(sort, n),
     unnest(ARRAY[false, true]) WITH ORDINALITY AS d(descending, m)
ORDER BY s.n, d.m;

SELECT is(pg_temp.paged(s.sort, d.descending, 3, 'in_progress'), pg_temp.ids(s.sort, d.descending, 'in_progress'),
          format('status in_progress, sort %s %s: pages of 3 add up to the whole list', s.sort,
                 CASE WHEN d.descending THEN 'descending' ELSE 'ascending' END))
FROM unnest(ARRAY['created_at', 'next_contact_at', 'contact_name', 'owner', 'status', 'priority'])
     WITH ORDINALITY AS s(sort, n),
     unnest(ARRAY[false, true]) WITH ORDINALITY AS d(descending, m)
ORDER BY s.n, d.m;
SELECT is(pg_temp.paged(s.sort, d.descending, 3, NULL, 'a'), pg_temp.ids(s.sort, d.descending, NULL, 'a'),
          format('owner_search a, sort %s %s: pages of 3 add up to the whole list', s.sort,
                 CASE WHEN d.descending THEN 'descending' ELSE 'ascending' END))
FROM unnest(ARRAY['created_at', 'next_contact_at', 'contact_name', 'owner', 'status', 'priority'])
     WITH ORDINALITY AS s(sort, n),
     unnest(ARRAY[false, true]) WITH ORDINALITY AS d(descending, m)
ORDER BY s.n, d.m;

-- ---- status filter ----------------------------------------------------------------------
SELECT is(pg_temp.ids('created_at', true, 'open'), ARRAY[2012, 2003]::bigint[], 'status open');
SELECT is(ARRAY(SELECT DISTINCT total_count FROM contactlog.list_logs(status => 'in_progress')),
          ARRAY[8]::bigint[], 'status in_progress: total 8');
SELECT is((SELECT count(*)::int FROM contactlog.list_logs(status => 'in_progress')), 8,
          'status in_progress: 8 rows');
SELECT is(pg_temp.ids('next_contact_at', false, 'in_progress'),
          ARRAY[2009, 2005, 2008, 2001, 2010, 2002, 2006, 2007]::bigint[],
          'status in_progress sorted by next contact');
SELECT is(pg_temp.ids('owner', true, 'completed'), ARRAY[2011, 2004]::bigint[],
          'status completed sorted by owner: no owners, by id');

-- ---- owner search, taken literally ----------------------------------------------------------
SELECT is(pg_temp.ids('created_at', true, NULL, 'alic'), ARRAY[2010, 2007, 2001]::bigint[],
          'owner_search is a case-insensitive substring (Alice Archer, Zoe ALICIA)');
SELECT is(ARRAY(SELECT DISTINCT total_count FROM contactlog.list_logs(owner_search => 'alic')),
          ARRAY[3]::bigint[], 'owner_search: total 3');
SELECT is(pg_temp.ids('created_at', true, NULL, 'ALICE'), ARRAY[2007, 2001]::bigint[],
          'owner_search ALICE finds Alice Archer, not Zoe ALICIA');
SELECT is(pg_temp.ids('created_at', true, NULL, 'ker'), ARRAY[2002]::bigint[],
          'owner_search inside a name');
SELECT is(pg_temp.ids('created_at', true, NULL, '%'), ARRAY[2008]::bigint[],
          'owner_search % matches only a name with a %');
SELECT is(pg_temp.ids('created_at', true, NULL, '100%'), ARRAY[2008]::bigint[], 'owner_search 100%');
SELECT is(pg_temp.ids('created_at', true, NULL, '_'), ARRAY[2009]::bigint[],
          'owner_search _ matches only a name with an _');
SELECT is(pg_temp.ids('created_at', true, NULL, 'a_u'), '{}'::bigint[],
          'owner_search a_u: _ is no wildcard');
SELECT is(pg_temp.ids('created_at', true, NULL, ''''), ARRAY[2006, 2005]::bigint[],
          'owner_search with a quote');
SELECT is(pg_temp.ids('created_at', true, NULL, 'O''Brien'), ARRAY[2005]::bigint[], 'owner_search O''Brien');
SELECT is(pg_temp.ids('created_at', true, NULL, '''); DROP TABLE x; --'), ARRAY[2006]::bigint[],
          'owner_search ''); DROP TABLE x; -- is a piece of a name');
SELECT has_table('public', 'x', 'and table x is still there');
SELECT is(pg_temp.ids('created_at', true, NULL, E'\\'), '{}'::bigint[], 'owner_search \ (LIKE''s escape)');
SELECT is(pg_temp.ids('created_at', true, NULL, E'\\%'), '{}'::bigint[], 'owner_search \%');
SELECT is(pg_temp.ids('created_at', true, NULL, 'nobody'), '{}'::bigint[], 'owner_search without a match');
SELECT is(cardinality(pg_temp.ids('created_at', true, NULL, '')), 12, 'owner_search empty: no filter');
SELECT is(cardinality(pg_temp.ids('created_at', true, NULL, NULL)), 12, 'owner_search NULL: no filter');
SELECT is(pg_temp.ids('created_at', true, 'open', 'alic'), '{}'::bigint[],
          'owner_search with status open: open logs have no owner');
SELECT is(pg_temp.ids('owner', false, 'in_progress', 'a'),
          ARRAY[2001, 2007, 2002, 2008, 2009, 2005, 2006, 2010]::bigint[],
          'owner_search a (Robert''); DROP TABLE has one), in progress, sorted by owner');
-- Every sort with an owner search (logs in progress owned by a name with an a).
SELECT is(pg_temp.ids('created_at', true, NULL, 'a'),
          ARRAY[2010, 2009, 2008, 2007, 2006, 2005, 2002, 2001]::bigint[], 'owner_search a, newest first');
SELECT is(pg_temp.ids('contact_name', false, NULL, 'a'),
          ARRAY[2002, 2005, 2006, 2007, 2008, 2009, 2010, 2001]::bigint[], 'owner_search a, by contact');
SELECT is(pg_temp.ids('next_contact_at', true, NULL, 'a'),
          ARRAY[2010, 2001, 2008, 2005, 2009, 2007, 2006, 2002]::bigint[],
          'owner_search a, by next contact descending, no follow-up last');
SELECT is(pg_temp.ids('priority', true, NULL, 'a'),
          ARRAY[2008, 2002, 2009, 2007, 2006, 2001, 2010, 2005]::bigint[], 'owner_search a, by priority');
SELECT is(pg_temp.ids('status', false, NULL, 'a'),
          ARRAY[2001, 2002, 2005, 2006, 2007, 2008, 2009, 2010]::bigint[], 'owner_search a, by status');
SELECT is(ARRAY(SELECT id FROM contactlog.list_logs(NULL, 'a', 'owner', true, 2, 3)),
          ARRAY[2009, 2008, 2002]::bigint[], 'owner_search, sort owner descending, page 2 of 3');

-- ---- refused arguments --------------------------------------------------------------------------
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(sort => 'id')$$, '22023',
                 'unknown sort ''id'': use created_at, next_contact_at, contact_name, owner, status or priority',
                 'unknown sort: error 22023 naming the choices');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(sort => 'created_at; DROP TABLE x; --')$$, '22023', NULL,
                 'sort with SQL in it: error');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(sort => 'l.id')$$, '22023', NULL,
                 'sort naming a column: error');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(sort => NULL)$$, '22023', NULL, 'sort NULL: error');
SELECT has_table('public', 'x', 'table x survived the sorts');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(status => 'closed')$$, '22023', NULL, 'unknown status');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(page => 0)$$, '22023',
                 'page must be 1 or more, not 0', 'page 0');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(page => NULL)$$, '22023', NULL, 'page NULL');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(page_size => 0)$$, '22023',
                 'page_size must be between 1 and 1000, not 0', 'page_size 0');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(page_size => 1001)$$, '22023', NULL, 'page_size 1001');
SELECT throws_ok($$SELECT * FROM contactlog.list_logs(descending => NULL)$$, '22023', NULL, 'descending NULL');
SELECT is((SELECT count(*)::int FROM contactlog.list_logs(page_size => 1000)), 12, 'page_size 1000 is fine');

-- ---- open follow-ups ------------------------------------------------------------------------------
SELECT is(ARRAY(SELECT log_id FROM contactlog.open_follow_ups ORDER BY next_contact_at, log_id),
          ARRAY[2003, 2009, 2005, 2008, 2001, 2010, 2012]::bigint[],
          'open_follow_ups: open and in-progress logs with a next contact');
SELECT results_eq($$SELECT contact_name, owner_name, reason, priority FROM contactlog.open_follow_ups
                    WHERE log_id IN (2003, 2009) ORDER BY log_id$$,
                  $$VALUES ('Mia', NULL, NULL::text, 'low'), ('Gus', 'Dan_Under', NULL, 'normal')$$,
                  'open_follow_ups: contact, owner name (none when open), reason, priority');

-- ---- summary, before and after a day of work ----------------------------------------------------------
SELECT results_eq('SELECT * FROM contactlog.summary', $$VALUES (2::bigint, 8::bigint, 2::bigint, 7::bigint, 9::bigint)$$,
                  'summary at the start: 2 open, 8 in progress, 2 completed, 7 open follow-ups, badge 9');

-- The day, as the front end would do it.
SET LOCAL contactlog.actor = '201';
INSERT INTO contactlog.contact_log (id, created_by, contact_name, next_contact_at)
VALUES (2013, 201, 'Kim', '2030-03-01 09:00+00');
INSERT INTO contactlog.contact_log (id, created_by, contact_name) VALUES (2014, 201, 'Lea');
SELECT FROM contactlog.take(2003, 202);
SELECT FROM contactlog.complete(2003, 202);
SELECT FROM contactlog.surrender(2014, 201);
SELECT FROM contactlog.assign(2014, 207, 203);
SET LOCAL contactlog.actor = '203';
UPDATE contactlog.contact_log SET next_contact_at = '2030-03-02 09:00+00', reason = 'call' WHERE id = 2014;
SET LOCAL contactlog.actor = '201';
UPDATE contactlog.contact_log SET next_contact_at = NULL WHERE id = 2001;
UPDATE contactlog.contact_log SET notes = 'only notes' WHERE id = 2001;
DELETE FROM contactlog.contact_log WHERE id = 2007;
SELECT FROM contactlog.take(2005, 207);
SELECT FROM contactlog.complete(2005, 207);
SET LOCAL contactlog.actor = '207';
UPDATE contactlog.contact_log SET status = 'open' WHERE id = 2011;
SET LOCAL contactlog.actor = '';
UPDATE contactlog.contact_log SET status = 'completed', owner_id = NULL WHERE owner_id = 206;

SELECT results_eq('SELECT * FROM contactlog.summary', $$VALUES (2::bigint, 7::bigint, 4::bigint, 6::bigint, 8::bigint)$$,
                  'summary after the day: 2 open, 7 in progress, 4 completed, 6 open follow-ups, badge 8');
SELECT results_eq('SELECT * FROM contactlog.summary',
                  $$SELECT count(*) FILTER (WHERE status = 'open'), count(*) FILTER (WHERE status = 'in_progress'),
                           count(*) FILTER (WHERE status = 'completed'),
                           count(*) FILTER (WHERE status <> 'completed' AND next_contact_at IS NOT NULL),
                           count(*) FILTER (WHERE status = 'open')
                           + count(*) FILTER (WHERE status <> 'completed' AND next_contact_at IS NOT NULL)
                    FROM contactlog.contact_log$$,
                  'summary agrees with counting the logs');
SELECT is((SELECT count(*)::int FROM contactlog.open_follow_ups), 6, 'open_follow_ups has the 6 rows');
SELECT is(ARRAY(SELECT DISTINCT total_count FROM contactlog.list_logs()), ARRAY[13]::bigint[],
          'list_logs total after the day: 13');
SELECT is(ARRAY(SELECT DISTINCT total_count FROM contactlog.list_logs(status => s)),
          ARRAY[(SELECT count(*) FROM contactlog.contact_log WHERE status = s)],
          format('list_logs total for status %s agrees with counting', s))
FROM unnest(ARRAY['open', 'in_progress', 'completed']) s;
SELECT is(pg_temp.ids('owner', false, NULL, 'carol'), ARRAY[2008, 2014]::bigint[],
          'Carol now owns the log assigned to her');
SELECT is(pg_temp.paged('next_contact_at', true, 4), pg_temp.ids('next_contact_at', true),
          'paging still agrees after the day');

-- The counts are a cache: rebuilding them changes nothing.
CREATE TEMP TABLE summary_before ON COMMIT DROP AS SELECT * FROM contactlog.summary;
SELECT is(contactlog.recount_logs(), 13::bigint, 'recount_logs counts 13 logs');
SELECT results_eq('SELECT * FROM contactlog.summary', 'SELECT * FROM summary_before',
                  'summary unchanged by a recount');
SELECT ok((SELECT count(*) FROM contactlog.contact_log_tally) <= 12, 'the tally has one row per key');

-- An UPDATE that changes no count leaves the tally alone.
CREATE TEMP TABLE tally_before ON COMMIT DROP AS SELECT xmin::text AS x, * FROM contactlog.contact_log_tally;
UPDATE contactlog.contact_log SET notes = 'again', reason = 'r', priority = 'low';
SELECT results_eq('SELECT xmin::text, * FROM contactlog.contact_log_tally ORDER BY 1',
                  'SELECT * FROM tally_before ORDER BY 1', 'notes, reason, priority: no tally write');

-- Bulk changes and TRUNCATE keep it right.
INSERT INTO contactlog.contact_log (id, created_by, contact_name, status, next_contact_at)
SELECT 9000000 + g, 202, 'bulk ' || g, CASE WHEN g % 2 = 0 THEN 'open' ELSE 'completed' END,
       CASE WHEN g % 3 = 0 THEN '2030-04-01 09:00+00'::timestamptz END
FROM generate_series(1, 1000) g;
SELECT results_eq('SELECT open, completed, open_follow_ups FROM contactlog.summary',
                  $$VALUES (502::bigint, 504::bigint, 6::bigint + 166)$$, 'summary after a bulk insert');
DELETE FROM contactlog.contact_log WHERE contact_name LIKE 'bulk %' AND status = 'open';
SELECT results_eq('SELECT open, completed, open_follow_ups FROM contactlog.summary',
                  $$VALUES (2::bigint, 504::bigint, 6::bigint)$$, 'summary after a bulk delete');
TRUNCATE contactlog.contact_log;
SELECT results_eq('SELECT * FROM contactlog.summary', $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint)$$,
                  'summary after TRUNCATE: all zero');
SELECT is((SELECT count(*)::int FROM contactlog.list_logs()), 0, 'list_logs on no logs: empty');

SELECT * FROM finish();
ROLLBACK;
