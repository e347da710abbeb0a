-- The CRM's model: the attributes' defaults, a new log's defaults, and who may
-- change a log (ownership). Replaced on every run of install.sql, after the
-- migrations, which own the tables. The read side is sql/read_side.sql,
-- followupd's queue sql/queue.sql, the grants sql/roles.sql.

-- ---------------------------------------------------------------------------
-- Seeded attributes: added when missing, never overwritten.
-- ---------------------------------------------------------------------------
INSERT INTO contactlog.attribute (name, value) VALUES
    ('DefaultMessageSystem',         'Outlook Mail'),
    ('AddToCalendar',                '1'),
    ('AddToTasks',                   '0'),
    ('AppointmentDurationInMinutes', '30'),
    ('ReminderMinutesBeforeStart',   '15'),
    ('LinkUrlTemplate',              'https://crm.example.org/contact-logs/{id}'),
    ('SyncUpdates',                  '1')
ON CONFLICT (name) DO NOTHING;

-- A new log is in progress, locked by its creator, unless the INSERT says otherwise.
-- Like every trigger function here SECURITY DEFINER with a fixed search_path: it
-- runs the same whoever writes, whatever their search_path (see "Ownership").
CREATE OR REPLACE FUNCTION contactlog.contact_log_defaults() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status = 'in_progress' AND NEW.owner_id IS NULL THEN
            NEW.owner_id := NEW.created_by;
        END IF;
    ELSE
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS contact_log_defaults ON contactlog.contact_log;
CREATE TRIGGER contact_log_defaults
    BEFORE INSERT OR UPDATE ON contactlog.contact_log
    FOR EACH ROW EXECUTE FUNCTION contactlog.contact_log_defaults();

-- Attributes as followupd uses them: the stored value when valid, else the
-- documented default, with the reason in "problem".
CREATE OR REPLACE VIEW contactlog.effective_attribute AS
WITH defaults (name, default_value, rule) AS (
    VALUES ('DefaultMessageSystem',         'Outlook Mail', 'text'),
           ('AddToCalendar',                '1',  'flag'),
           ('AddToTasks',                   '0',  'flag'),
           ('AppointmentDurationInMinutes', '30', 'minutes_1_10080'),
           ('ReminderMinutesBeforeStart',   '15', 'minutes_0_40320'),
           ('LinkUrlTemplate',              'https://crm.example.org/contact-logs/{id}', 'link'),
           ('SyncUpdates',                  '1',  'flag'),
           ('FollowUpMailbox',              'creator', 'mailbox'),
           ('SyncFromOutlook',              '0',  'flag')
), checked AS (
    SELECT d.name, d.default_value, a.value, d.rule,
           CASE
               WHEN a.value IS NULL THEN NULL
               -- DefaultMessageSystem: exactly 'Outlook Mail' (blanks around it
               -- aside) turns delivery on, anything else off by design. A value
               -- that differs only in case or spacing is almost certainly a typo:
               -- it still counts as off (the rule is exact) but is reported.
               WHEN d.rule = 'text' AND btrim(a.value) <> d.default_value
                    AND lower(regexp_replace(a.value, '\s+', '', 'g'))
                        = lower(regexp_replace(d.default_value, '\s+', '', 'g'))
                   THEN format('differs from %L only in case or spacing: delivery to Exchange '
                               'is OFF (only exactly %L turns it on)',
                               d.default_value, d.default_value)
               WHEN d.rule = 'text' THEN NULL
               WHEN d.rule = 'flag' AND a.value NOT IN ('0', '1')
                   THEN 'must be 0 or 1'
               WHEN d.rule = 'mailbox' AND btrim(a.value) NOT IN ('creator', 'owner')
                   THEN 'must be creator or owner'
               WHEN d.rule LIKE 'minutes_%' AND a.value !~ '^\s*[0-9]{1,6}\s*$'
                   THEN 'must be a whole number of minutes'
               WHEN d.rule = 'minutes_1_10080' AND NOT a.value::int BETWEEN 1 AND 10080
                   THEN 'must be between 1 and 10080 minutes'
               WHEN d.rule = 'minutes_0_40320' AND NOT a.value::int BETWEEN 0 AND 40320
                   THEN 'must be between 0 and 40320 minutes'
               WHEN d.rule = 'link' AND position('{id}' IN a.value) = 0
                   THEN 'must contain {id}'
               WHEN d.rule = 'link' AND a.value !~* '^https?://[^\s"''<>[:cntrl:]]+$'
                   THEN 'must be an http:// or https:// address without spaces or quotes'
           END AS problem
    FROM defaults d
    LEFT JOIN contactlog.attribute a USING (name)
)
SELECT name,
       value,
       CASE WHEN value IS NULL OR (problem IS NOT NULL AND rule <> 'text') THEN default_value
            ELSE btrim(value) END AS effective_value,
       CASE WHEN problem IS NULL THEN NULL
            WHEN rule = 'text' THEN format('attribute %s = %L %s', name, value, problem)
            ELSE format('attribute %s = %L %s; using the default %L',
                        name, value, problem, default_value) END AS problem
FROM checked;

-- ---- Ownership and the read side (issues 5 and 14) ---------------------------
--
-- Who may change a log (SPEC §2 "Ownership"). Who is acting is decided here, from
-- the session, never taken on trust from a caller who could name someone else:
--
--  * a login that is a member of contactlog_staff acts as the active employee
--    whose login equals session_user; naming anyone else (actor_id, or
--    contactlog.actor) is refused (42501);
--  * a login that is a member of contactlog_app (a trusted front end) names the
--    employee per transaction: SET LOCAL contactlog.actor = '<id>' or actor_id;
--    naming nobody is refused (42501) for any change;
--  * any other session (schema owner, superuser, or a role an operator granted
--    table privileges to directly) is maintenance: a named actor is checked,
--    none means no ownership check.
--
-- session_user, not current_user: inside these SECURITY DEFINER functions
-- current_user is their owner, while session_user stays the login (SET ROLE does
-- not change it; SET SESSION AUTHORIZATION needs a superuser).
--
--  * contactlog.take / surrender / assign / complete check the rules themselves,
--    on the log row locked FOR UPDATE, and change it with their owner's
--    privileges. Staff and app roles cannot change status, owner_id or
--    created_by in any other way (column privileges, "Roles and privileges").
--  * Every other INSERT, UPDATE or DELETE of a log goes through the trigger
--    contact_log_ownership: only the owner of an in-progress log may change or
--    delete it, a completed log only an administrator; staff create logs only as
--    themselves. Refusals are SQLSTATE 42501 and name the owner; a refused
--    statement changes nothing. The trigger's WHEN clause skips statements run
--    with maintenance privileges (current_user, evaluated where the statement
--    runs): the four functions' own UPDATEs and the schema owner's maintenance.
--
-- Every function here is SECURITY DEFINER with search_path fixed to pg_catalog,
-- contactlog, pg_temp (pg_temp last: a caller's temporary objects never shadow
-- ours or the built-ins), and EXECUTE only for the roles that need it.

-- True when role_name has the privileges of the owner of contactlog.contact_log
-- (or is a superuser): its statements are maintenance, not checked by
-- contact_log_ownership. An SQL-standard body: bound when created, so no
-- caller's search_path changes what it calls. Executable by everyone (the
-- trigger's WHEN clause runs with the writer's privileges).
CREATE OR REPLACE FUNCTION contactlog.is_maintenance_role(role_name name) RETURNS boolean
LANGUAGE sql STABLE
RETURN (SELECT r.rolsuper OR pg_catalog.pg_has_role(role_name, c.relowner, 'USAGE')
        FROM pg_catalog.pg_roles r, pg_catalog.pg_class c
        WHERE r.rolname = role_name AND c.oid = 'contactlog.contact_log'::pg_catalog.regclass);

-- How this session acts: 'staff', 'app', 'maintenance' (superuser or the owner's
-- privileges) or 'other' (a role outside the model; treated like maintenance).
-- A superuser counts as a member of every role, so it is asked first.
CREATE OR REPLACE FUNCTION contactlog.session_kind() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
    SELECT CASE
               WHEN r.rolsuper THEN 'maintenance'
               WHEN pg_has_role(session_user, 'contactlog_staff', 'MEMBER') THEN 'staff'
               WHEN pg_has_role(session_user, 'contactlog_app', 'MEMBER') THEN 'app'
               WHEN contactlog.is_maintenance_role(session_user) THEN 'maintenance'
               ELSE 'other'
           END
    FROM pg_roles r
    WHERE r.rolname = session_user;
$$;

-- "Alice Archer (alice)", for messages.
CREATE OR REPLACE FUNCTION contactlog.employee_label(employee_id bigint) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
    SELECT coalesce((SELECT format('%s (%s)', e.display_name, e.login)
                     FROM contactlog.employee e WHERE e.id = employee_id),
                    format('employee %s', employee_id));
$$;

-- contactlog.actor as an employee id; NULL when unset or empty.
CREATE OR REPLACE FUNCTION contactlog.actor_setting() RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    raw constant text := nullif(btrim(current_setting('contactlog.actor', true)), '');
BEGIN
    IF raw IS NULL THEN
        RETURN NULL;
    END IF;
    IF raw !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'contactlog.actor = % is not an employee id', quote_literal(raw)
            USING ERRCODE = '22023',
                  HINT = 'SET LOCAL contactlog.actor = ''<employee id>'', or leave it empty for maintenance.';
    END IF;
    RETURN raw::bigint;
END
$$;

-- The acting employee's id for this session (the table above), given the
-- actor_id a caller passed (NULL: none). NULL only for maintenance naming nobody.
-- Front ends may call it: "who am I acting as".
DROP FUNCTION IF EXISTS contactlog.current_actor();
CREATE OR REPLACE FUNCTION contactlog.current_actor(actor_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    kind    constant text := contactlog.session_kind();
    setting constant bigint := contactlog.actor_setting();
    me      bigint;
    named   bigint;
BEGIN
    IF kind = 'staff' THEN
        SELECT e.id INTO me FROM contactlog.employee e WHERE e.login = session_user;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'login % is not an employee and may not change contact logs',
                            quote_ident(session_user)
                USING ERRCODE = '42501',
                      HINT = 'A member of contactlog_staff acts as the employee whose login '
                             'equals its database login.';
        END IF;
        named := CASE WHEN actor_id <> me THEN actor_id WHEN setting <> me THEN setting END;
        IF named IS NOT NULL THEN
            RAISE EXCEPTION 'login % acts as % and may not act as %', quote_ident(session_user),
                            contactlog.employee_label(me), contactlog.employee_label(named)
                USING ERRCODE = '42501',
                      DETAIL = 'A member of contactlog_staff always acts as itself.',
                      HINT = 'Leave actor_id NULL and contactlog.actor unset.';
        END IF;
        RETURN me;
    END IF;
    IF kind = 'app' THEN
        IF actor_id IS NOT NULL AND setting IS NOT NULL AND actor_id <> setting THEN
            RAISE EXCEPTION 'actor_id % and contactlog.actor % name different employees',
                            actor_id, setting
                USING ERRCODE = '42501';
        END IF;
        IF coalesce(actor_id, setting) IS NULL THEN
            RAISE EXCEPTION 'no acting employee named: login % may not change contact logs '
                            'without one', quote_ident(session_user)
                USING ERRCODE = '42501',
                      DETAIL = 'A member of contactlog_app names the employee acting in each '
                               'transaction.',
                      HINT = 'SET LOCAL contactlog.actor = ''<employee id>'', or pass actor_id.';
        END IF;
    END IF;
    RETURN coalesce(actor_id, setting);
END
$$;

-- The employee acting (current_actor), who must exist and be active.
CREATE OR REPLACE FUNCTION contactlog.acting_employee(actor_id bigint)
RETURNS contactlog.employee
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    resolved constant bigint := contactlog.current_actor(actor_id);
    actor    contactlog.employee;
BEGIN
    IF resolved IS NULL THEN
        RAISE EXCEPTION 'the acting employee (actor_id) must not be NULL'
            USING ERRCODE = '22023',
                  HINT = 'Pass actor_id or SET LOCAL contactlog.actor = ''<employee id>''.';
    END IF;
    SELECT * INTO actor FROM contactlog.employee e WHERE e.id = resolved;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'acting employee % does not exist', resolved
            USING ERRCODE = 'P0002';
    END IF;
    IF NOT actor.active THEN
        RAISE EXCEPTION 'employee % is inactive and may not change contact logs',
                        contactlog.employee_label(actor.id)
            USING ERRCODE = '42501';
    END IF;
    RETURN actor;
END
$$;

-- Raises the refusal (42501) for actor doing action ("change", "take", ...) to
-- target, naming who holds it.
CREATE OR REPLACE FUNCTION contactlog.refuse(target contactlog.contact_log,
                                             actor contactlog.employee, action text)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
BEGIN
    IF target.status = 'in_progress' THEN
        RAISE EXCEPTION 'contact log % is locked by %', target.id,
                        contactlog.employee_label(target.owner_id)
            USING ERRCODE = '42501',
                  DETAIL = format('%s may not %s it.', contactlog.employee_label(actor.id), action),
                  HINT = 'Only its owner may change it; an administrator may take it over '
                         'with contactlog.take().';
    ELSIF target.status = 'open' THEN
        RAISE EXCEPTION 'contact log % is open (locked by nobody)', target.id
            USING ERRCODE = '42501',
                  DETAIL = format('%s may not %s it.', contactlog.employee_label(actor.id), action),
                  HINT = 'Take it first with contactlog.take().';
    ELSE
        RAISE EXCEPTION 'contact log % is completed', target.id
            USING ERRCODE = '42501',
                  DETAIL = format('%s may not %s it.', contactlog.employee_label(actor.id), action),
                  HINT = 'Only an administrator may change a completed log.';
    END IF;
END
$$;

-- The log, locked for the rest of the transaction. Two sessions acting on one log
-- queue here; the second sees the first one's committed result and is refused or
-- allowed by it (READ COMMITTED; above that it gets a serialization failure).
CREATE OR REPLACE FUNCTION contactlog.lock_log(log_id bigint) RETURNS contactlog.contact_log
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    target contactlog.contact_log;
BEGIN
    IF log_id IS NULL THEN
        RAISE EXCEPTION 'the contact log id (log_id) must not be NULL' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO target FROM contactlog.contact_log l WHERE l.id = log_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact log % does not exist', log_id USING ERRCODE = 'P0002';
    END IF;
    RETURN target;
END
$$;

-- Anyone takes an open log; an administrator also a log locked by someone else
-- (forced takeover). Taking one's own log again changes nothing.
--
-- Until issue 14 the four functions carried SET contactlog.actor = '' (so the
-- ownership trigger let their own UPDATE through); CREATE OR REPLACE drops that
-- clause: the trigger now skips them by privilege (its WHEN clause).
CREATE OR REPLACE FUNCTION contactlog.take(log_id bigint, actor_id bigint DEFAULT NULL)
RETURNS contactlog.contact_log
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    actor  constant contactlog.employee := contactlog.acting_employee(actor_id);
    target contactlog.contact_log := contactlog.lock_log(log_id);
BEGIN
    IF target.status = 'in_progress' AND target.owner_id = actor.id THEN
        RETURN target;
    END IF;
    IF NOT (target.status = 'open'
            OR (target.status = 'in_progress' AND actor.role = 'admin')) THEN
        PERFORM contactlog.refuse(target, actor, 'take');
    END IF;
    UPDATE contactlog.contact_log l SET status = 'in_progress', owner_id = actor.id
    WHERE l.id = target.id
    RETURNING * INTO target;
    RETURN target;
END
$$;

-- The owner gives the log back: open, no owner.
CREATE OR REPLACE FUNCTION contactlog.surrender(log_id bigint, actor_id bigint DEFAULT NULL)
RETURNS contactlog.contact_log
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    actor  constant contactlog.employee := contactlog.acting_employee(actor_id);
    target contactlog.contact_log := contactlog.lock_log(log_id);
BEGIN
    IF NOT (target.status = 'in_progress' AND target.owner_id = actor.id) THEN
        PERFORM contactlog.refuse(target, actor, 'surrender');
    END IF;
    UPDATE contactlog.contact_log l SET status = 'open', owner_id = NULL
    WHERE l.id = target.id
    RETURNING * INTO target;
    RETURN target;
END
$$;

-- The owner, anyone on an open log, or an administrator (on any log, a completed
-- one included) hands the log to assignee_id: in progress, owned by and assigned
-- to the assignee, who must be active. actor_id may be NULL (the session's actor).
CREATE OR REPLACE FUNCTION contactlog.assign(log_id bigint, actor_id bigint, assignee_id bigint)
RETURNS contactlog.contact_log
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    actor    constant contactlog.employee := contactlog.acting_employee(actor_id);
    assignee contactlog.employee;
    target   contactlog.contact_log;
BEGIN
    IF assignee_id IS NULL THEN
        RAISE EXCEPTION 'the assignee (assignee_id) must not be NULL' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO assignee FROM contactlog.employee e WHERE e.id = assignee_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'assignee % does not exist', assignee_id USING ERRCODE = 'P0002';
    END IF;
    IF NOT assignee.active THEN
        RAISE EXCEPTION 'cannot assign a contact log to %: the employee is inactive',
                        contactlog.employee_label(assignee.id)
            USING ERRCODE = '22023';
    END IF;
    target := contactlog.lock_log(log_id);
    IF NOT (actor.role = 'admin'
            OR target.status = 'open'
            OR (target.status = 'in_progress' AND target.owner_id = actor.id)) THEN
        PERFORM contactlog.refuse(target, actor, 'assign');
    END IF;
    UPDATE contactlog.contact_log l
    SET status = 'in_progress', owner_id = assignee.id, assigned_to = assignee.id
    WHERE l.id = target.id
    RETURNING * INTO target;
    RETURN target;
END
$$;

-- The owner finishes the log: completed, no owner.
CREATE OR REPLACE FUNCTION contactlog.complete(log_id bigint, actor_id bigint DEFAULT NULL)
RETURNS contactlog.contact_log
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    actor  constant contactlog.employee := contactlog.acting_employee(actor_id);
    target contactlog.contact_log := contactlog.lock_log(log_id);
BEGIN
    IF NOT (target.status = 'in_progress' AND target.owner_id = actor.id) THEN
        PERFORM contactlog.refuse(target, actor, 'complete');
    END IF;
    UPDATE contactlog.contact_log l SET status = 'completed', owner_id = NULL
    WHERE l.id = target.id
    RETURNING * INTO target;
    RETURN target;
END
$$;

-- Direct writes of logs by anyone but maintenance (the trigger's WHEN clause):
--  * INSERT: a staff login creates logs only as itself (created_by, and owner_id
--    when in progress); an app session must name an actor;
--  * UPDATE, DELETE: only the owner of an in-progress log, or an administrator on
--    a completed log; an open log nobody (take it first). A DELETE is a change
--    like any other.
-- Staff and app sessions always have an actor (or are refused by current_actor);
-- a role outside the model (kind 'other') is checked only when it names one, as
-- before issue 14.
CREATE OR REPLACE FUNCTION contactlog.contact_log_check_owner() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    kind  constant text := contactlog.session_kind();
    actor contactlog.employee;
BEGIN
    IF kind IN ('maintenance', 'other') AND contactlog.actor_setting() IS NULL THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    actor := contactlog.acting_employee(NULL);
    IF TG_OP = 'INSERT' THEN
        IF kind = 'staff' AND (NEW.created_by IS DISTINCT FROM actor.id
                               OR NEW.owner_id IS DISTINCT FROM actor.id AND NEW.owner_id IS NOT NULL) THEN
            RAISE EXCEPTION '% may not create a contact log as %', contactlog.employee_label(actor.id),
                            contactlog.employee_label(CASE WHEN NEW.created_by IS DISTINCT FROM actor.id
                                                           THEN NEW.created_by ELSE NEW.owner_id END)
                USING ERRCODE = '42501',
                      HINT = 'A member of contactlog_staff creates logs with created_by and '
                             'owner_id set to itself (or owner_id left out).';
        END IF;
        RETURN NEW;
    END IF;
    IF NOT (CASE OLD.status
                WHEN 'in_progress' THEN OLD.owner_id = actor.id
                WHEN 'completed'   THEN actor.role = 'admin'
                ELSE false
            END) THEN
        PERFORM contactlog.refuse(OLD, actor, lower(TG_OP));
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

-- After contact_log_defaults (triggers fire in name order), so a new log's
-- owner is already filled in. IS NOT TRUE: should the test ever yield NULL, the
-- check runs (fails closed).
DROP TRIGGER IF EXISTS contact_log_ownership ON contactlog.contact_log;
CREATE TRIGGER contact_log_ownership
    BEFORE INSERT OR UPDATE OR DELETE ON contactlog.contact_log
    FOR EACH ROW
    WHEN (contactlog.is_maintenance_role(current_user) IS NOT TRUE)
    EXECUTE FUNCTION contactlog.contact_log_check_owner();
