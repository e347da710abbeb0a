-- ---------------------------------------------------------------------------
-- Roles and privileges (issue 14, SPEC §2 "Ownership"). Last, so it covers every
-- function and view defined above, whoever added them.
--
--   contactlog_staff   people logging in with their own role: read logs and the
--                      read side, insert logs as themselves, change them through
--                      the rules (functions, owner-only UPDATE/DELETE)
--   contactlog_app     a trusted front end that names the person per transaction:
--                      the same privileges, any actor it names
--   contactlog_admin   may change contactlog.attribute (followupctl attr)
--   contactlog_daemon  followupd: its queue functions and the reads delivery
--                      needs; no privilege on any table, so it cannot change a log
--
-- Only what the installer grants to these four roles and revokes from PUBLIC is
-- touched here: privileges an operator granted to other roles stay as they are
-- (a warning names those that let a role write followupd's bookkeeping).
-- ---------------------------------------------------------------------------

-- The group roles, created when missing (roles belong to the cluster, so another
-- database's installer may have made them already). NOLOGIN: logins are the
-- operator's, made members with GRANT contactlog_staff TO alice.
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['contactlog_staff', 'contactlog_app',
                                     'contactlog_admin', 'contactlog_daemon'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = role_name);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        EXCEPTION
            WHEN duplicate_object THEN
                NULL;   -- an installer of another database was quicker
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role % does not exist, and % may not create roles',
                                role_name, current_user
                    USING ERRCODE = '42501',
                          HINT = format('Let a superuser run CREATE ROLE %I NOLOGIN (or give %I '
                                        'CREATEROLE), then run the installer again.',
                                        role_name, current_user);
        END;
    END LOOP;
END
$roles$;

GRANT USAGE ON SCHEMA contactlog
    TO contactlog_staff, contactlog_app, contactlog_admin, contactlog_daemon;

-- Functions: PostgreSQL lets PUBLIC execute every new function. Only the ones
-- meant to be called keep that or are granted on: the rules and the read side
-- to staff and app, followupd's to the daemon. Trigger functions and helpers are
-- run by the functions' owner. Two stay executable by everyone: priority_rank
-- (an index expression, evaluated by whoever writes a log) and
-- is_maintenance_role (the ownership trigger's WHEN clause, likewise).
REVOKE EXECUTE ON FUNCTION
    contactlog.session_kind(),
    contactlog.employee_label(bigint),
    contactlog.actor_setting(),
    contactlog.current_actor(bigint),
    contactlog.acting_employee(bigint),
    contactlog.refuse(contactlog.contact_log, contactlog.employee, text),
    contactlog.lock_log(bigint),
    contactlog.take(bigint, bigint),
    contactlog.surrender(bigint, bigint),
    contactlog.assign(bigint, bigint, bigint),
    contactlog.complete(bigint, bigint),
    contactlog.contact_log_defaults(),
    contactlog.contact_log_check_owner(),
    contactlog.outlook_home_changed(),
    contactlog.contact_log_tally_add(text, bigint, boolean, bigint),
    contactlog.contact_log_tally_track(),
    contactlog.contact_log_tally_clear(),
    contactlog.recount_logs(),
    contactlog.like_escape(text),
    contactlog.list_logs_source(boolean, integer, text, text, text, boolean),
    contactlog.list_logs_sql(text, text, text),
    contactlog.list_logs(text, text, text, boolean, integer, integer)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    contactlog.current_actor(bigint),
    contactlog.take(bigint, bigint),
    contactlog.surrender(bigint, bigint),
    contactlog.assign(bigint, bigint, bigint),
    contactlog.complete(bigint, bigint),
    contactlog.list_logs(text, text, text, boolean, integer, integer)
TO contactlog_staff, contactlog_app;

-- Staff and app: read the logs, the people and the read side; write logs through
-- the rules. Column privileges keep status, owner_id and created_by (and ids and
-- times) out of plain UPDATEs: locks move only through take, surrender, assign
-- and complete, and a log never changes creator (whose mailbox its items are in).
-- No privilege on employee beyond reading (an employee's role makes an admin),
-- on attribute, or on followupd's tables.
GRANT SELECT ON contactlog.contact_log, contactlog.employee,
                contactlog.open_follow_ups, contactlog.summary
    TO contactlog_staff, contactlog_app;

-- What flowed back from Outlook (SPEC §7): for the front end, the administrator
-- and followupctl. The table behind it is followupd's, written only by
-- followupd_apply_outlook_changes.
GRANT SELECT ON contactlog.outlook_changes
    TO contactlog_staff, contactlog_app, contactlog_admin, contactlog_daemon;
GRANT INSERT (created_by, contact_name, notes, status, owner_id, priority, assigned_to,
              forward_to, reason, next_contact_at)
    ON contactlog.contact_log TO contactlog_staff, contactlog_app;
GRANT UPDATE (contact_name, notes, priority, assigned_to, forward_to, reason, next_contact_at)
    ON contactlog.contact_log TO contactlog_staff, contactlog_app;
GRANT DELETE ON contactlog.contact_log TO contactlog_staff, contactlog_app;

-- Administrators of the attributes; they read them as followupd does, too.
GRANT SELECT, INSERT, UPDATE, DELETE ON contactlog.attribute TO contactlog_admin;
GRANT SELECT ON contactlog.effective_attribute TO contactlog_admin, contactlog_daemon;

-- followupd (and followupctl with its configuration): every followupd_* function
-- and view, whatever the queue code above defines, plus the outbox trigger. The
-- functions run as their owner with a fixed search_path (pg_temp last), so the
-- daemon's role needs no privilege on any table; the outbox trigger runs as its
-- owner for every writer of a log, so no writer needs one on outlook_sync.
DO $privileges$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT format('%I.%I(%s)', n.nspname, p.proname,
                      pg_catalog.pg_get_function_identity_arguments(p.oid)) AS signature,
               p.proname LIKE 'followupd\_%' AS for_daemon
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'contactlog' AND p.prokind = 'f'
          AND (p.proname LIKE 'followupd\_%' OR p.proname = 'outlook_mark_dirty')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER '
                       'SET search_path = pg_catalog, contactlog, pg_temp', f.signature);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f.signature);
        IF f.for_daemon THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO contactlog_daemon', f.signature);
        END IF;
    END LOOP;
    FOR f IN
        SELECT format('%I.%I', n.nspname, c.relname) AS name
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'contactlog' AND c.relkind IN ('v', 'm')
          AND c.relname LIKE 'followupd\_%'
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO contactlog_daemon', f.name);
    END LOOP;
END
$privileges$;

-- Grants made by hand before (the operator guide used to ask for UPDATE on
-- outlook_sync for the CRM's role) would still let a role write followupd's
-- bookkeeping or the attributes behind the model's back. They are the
-- operator's, so they are named, not revoked.
DO $legacy$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT format('%I.%I', n.nspname, c.relname) AS relation,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                    ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee,
               string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
        WHERE n.nspname = 'contactlog'
          AND c.relkind IN ('r', 'p', 'S')
          AND (c.relname LIKE 'outlook\_%' OR c.relname IN ('attribute', 'contact_log_tally',
                                                             'schema_version'))
          AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'USAGE')
          AND a.grantee <> c.relowner
          AND NOT (c.relname = 'attribute'
                   AND a.grantee = (SELECT r.oid FROM pg_catalog.pg_roles r
                                    WHERE r.rolname = 'contactlog_admin'))
        GROUP BY 1, 2
        ORDER BY 1, 2
    LOOP
        RAISE WARNING 'role % may % on %, granted outside followupd''s installer; left as it is',
                      g.grantee, g.privileges, g.relation
            USING HINT = format('Unless that is meant: REVOKE %s ON %s FROM %s; '
                                '(followupd''s functions write its tables; see the operator guide, '
                                'section 2).', g.privileges, g.relation, g.grantee);
    END LOOP;
END
$legacy$;
