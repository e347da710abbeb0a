-- followupd's queue: the outbox trigger that marks a log dirty, and the functions
-- through which the daemon (and followupctl) claim, record and give back work.
-- Replaced on every run of install.sql, after the CRM's parts; the views that
-- report on the queue are sql/queue_views.sql.

-- The outbox trigger: marks the log dirty and wakes followupd, both only on commit.
CREATE OR REPLACE FUNCTION contactlog.outlook_mark_dirty() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    log_id bigint;
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.next_contact_at IS NOT DISTINCT FROM OLD.next_contact_at
       AND NEW.reason          IS NOT DISTINCT FROM OLD.reason
       AND NEW.priority        IS NOT DISTINCT FROM OLD.priority
       AND NEW.assigned_to     IS NOT DISTINCT FROM OLD.assigned_to
       AND NEW.forward_to      IS NOT DISTINCT FROM OLD.forward_to
       AND NEW.contact_name    IS NOT DISTINCT FROM OLD.contact_name
       AND NEW.created_by      IS NOT DISTINCT FROM OLD.created_by
       AND (NEW.status = 'completed') = (OLD.status = 'completed')
       -- a new owner matters only when the items follow the owner
       AND (NEW.owner_id IS NOT DISTINCT FROM OLD.owner_id
            OR (SELECT a.effective_value FROM contactlog.effective_attribute a
                WHERE a.name = 'FollowUpMailbox') IS DISTINCT FROM 'owner') THEN
        RETURN NULL;   -- nothing Outlook shows has changed (e.g. a lock taken)
    END IF;

    log_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;

    -- A new date in the CRM brings back an item its user deleted in Outlook
    -- (SyncFromOutlook = 1, sql/outlook_sync_back.sql); no such item: no row
    -- touched, no lock taken.
    -- (A follow-up cleared keeps the flag: the item is gone already, nothing to send.)
    IF TG_OP = 'UPDATE' AND NEW.next_contact_at IS DISTINCT FROM OLD.next_contact_at
       AND NEW.next_contact_at IS NOT NULL THEN
        UPDATE contactlog.outlook_item i
        SET deleted_in_outlook = false, updated_at = now()
        WHERE i.contact_log_id = log_id AND i.deleted_in_outlook;
    END IF;

    -- The version is drawn after the row is locked (in DO UPDATE), so versions
    -- of one log grow in commit order. A parked log is parked at its version: a
    -- newer one gives it a fresh start; a back-off (the daemon's) keeps running.
    INSERT INTO contactlog.outlook_sync AS s (contact_log_id, version, inserted_with_follow_up)
    VALUES (log_id, nextval('contactlog.outlook_version_seq'),
            TG_OP = 'INSERT' AND NEW.next_contact_at IS NOT NULL)
    ON CONFLICT (contact_log_id) DO UPDATE
        SET version    = nextval('contactlog.outlook_version_seq'),
            changed_at = now();

    PERFORM pg_notify('followupd', log_id::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS contact_log_outlook_dirty ON contactlog.contact_log;
CREATE TRIGGER contact_log_outlook_dirty
    AFTER INSERT OR UPDATE OR DELETE ON contactlog.contact_log
    FOR EACH ROW EXECUTE FUNCTION contactlog.outlook_mark_dirty();

-- FollowUpMailbox switched (either way, by any means): every log that has items
-- in Outlook is dirty, so the queue moves them home at its normal pace
-- (docs/architecture.md "Moves between mailboxes"). Completed logs' items stay.
CREATE OR REPLACE FUNCTION contactlog.outlook_home_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
BEGIN
    IF coalesce(NEW.name, OLD.name) <> 'FollowUpMailbox'
       OR (TG_OP = 'UPDATE' AND NEW.value IS NOT DISTINCT FROM OLD.value) THEN
        RETURN NULL;
    END IF;
    INSERT INTO contactlog.outlook_sync AS s (contact_log_id, version, inserted_with_follow_up)
    SELECT m.contact_log_id, nextval('contactlog.outlook_version_seq'), false
    FROM (SELECT DISTINCT i.contact_log_id   -- one row per log, however many items
          FROM contactlog.outlook_item i
          JOIN contactlog.contact_log l ON l.id = i.contact_log_id AND l.status <> 'completed'
          ORDER BY 1) m
    ON CONFLICT (contact_log_id) DO UPDATE
        SET version    = nextval('contactlog.outlook_version_seq'),
            changed_at = now();
    PERFORM pg_notify('followupd', 'FollowUpMailbox');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS attribute_outlook_home ON contactlog.attribute;
CREATE TRIGGER attribute_outlook_home
    AFTER INSERT OR UPDATE OR DELETE ON contactlog.attribute
    FOR EACH ROW EXECUTE FUNCTION contactlog.outlook_home_changed();

-- ---- The queue (issue 11: fenced claims; docs/architecture.md "Claiming") ----
--
-- Every function below that writes for a log takes the claim token of the job
-- that writes and changes nothing when it is not the log's current token. A
-- refused ("fenced-out") write bumps redo and sets not_before: one more pass,
-- after anything the stale job sent can have landed, that ignores the recorded
-- content hashes.

-- When each dirty, unparked log may next be worked on: not before its back-off
-- (next_attempt_at), its settle time (not_before), or — while claimed — before
-- its lease has run out plus the settle time (a lapsed job's last request may
-- still land). A log with an outbox row but no queue row is new: due now.
CREATE OR REPLACE FUNCTION contactlog.followupd_due(settle_ms integer)
RETURNS TABLE (contact_log_id bigint, due_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT d.contact_log_id,
           greatest(d.next_attempt_at, d.not_before,
                    d.claimed_until + make_interval(secs => settle_ms / 1000.0))
    FROM (
        SELECT s.contact_log_id, q.next_attempt_at, q.not_before, q.claimed_until
        FROM contactlog.outlook_sync s
        LEFT JOIN contactlog.outlook_queue q ON q.contact_log_id = s.contact_log_id
        WHERE q.contact_log_id IS NULL
           OR (s.version > q.synced_version
               AND (q.failed_version IS NULL OR q.failed_version < s.version))
           OR q.redo > q.synced_redo
        UNION
        SELECT q.contact_log_id, q.next_attempt_at, q.not_before, q.claimed_until
        FROM contactlog.outlook_queue q
        WHERE q.redo > q.synced_redo
    ) d;
$$;

-- Claims up to batch_size due logs for worker, each with a fresh token, and
-- returns everything needed to reconcile them: the log, its people, the items
-- already in Outlook, and whether the pass must ignore content hashes (a resync,
-- or a redo after a fenced-out write).
--
-- Two statements on purpose: the rows are locked by one, the data read by the
-- next, whose newer snapshot sees the log at least as new as the version claimed
-- (the outbox row and the log change in one transaction, so one snapshot reads
-- them consistently).
-- (Its result columns grow now and then: a new row type needs a new function.)
DROP FUNCTION IF EXISTS contactlog.followupd_claim(integer, integer, text, integer);
-- (Issue 16 added owner_email and owner_time_zone, issue 17 the deleted flags: a new
-- result type each time.)
DROP FUNCTION IF EXISTS contactlog.followupd_claim(integer, integer, text, integer);
CREATE OR REPLACE FUNCTION contactlog.followupd_claim(batch_size integer,
                                                      lease_seconds integer,
                                                      worker text,
                                                      settle_ms integer)
RETURNS TABLE (
    contact_log_id bigint, claim_token bigint, version bigint, redo integer,
    forced boolean, attempts integer,
    inserted_with_follow_up boolean, ever_synced boolean,
    log_exists boolean, status text, next_contact_at bigint,
    reason text, contact_name text, priority text,
    creator_email text, creator_time_zone text,
    assigned_name text, forward_name text,
    appointment_mailbox text, appointment_item_id text,
    appointment_change_key text, appointment_hash text, appointment_pending boolean,
    task_mailbox text, task_item_id text,
    task_change_key text, task_hash text, task_pending boolean,
    problem text,
    -- the owner, when one who can hold the items (active, with an email address)
    owner_email text, owner_time_zone text,
    -- deleted by a person in Outlook (SyncFromOutlook): never updated, moved or recreated
    appointment_deleted boolean, task_deleted boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    settle interval := make_interval(secs => settle_ms / 1000.0);
    candidate_ids bigint[];
    claimed_ids bigint[];
BEGIN
    -- Oldest logs first (ids grow with time), read along the outbox's primary key
    -- and stopped after batch_size: the cost follows the batch, not the backlog.
    SELECT array_agg(c.contact_log_id) INTO candidate_ids
    FROM ((SELECT s.contact_log_id
           FROM contactlog.outlook_sync s
           LEFT JOIN contactlog.outlook_queue q ON q.contact_log_id = s.contact_log_id
           WHERE q.contact_log_id IS NULL
              OR (s.version > q.synced_version
                  AND (q.failed_version IS NULL OR q.failed_version < s.version)
                  AND q.next_attempt_at <= now()
                  AND (q.not_before IS NULL OR q.not_before <= now())
                  AND (q.claimed_until IS NULL OR q.claimed_until + settle < now()))
           ORDER BY s.contact_log_id
           LIMIT batch_size)
          UNION
          (SELECT q.contact_log_id
           FROM contactlog.outlook_queue q
           WHERE q.redo > q.synced_redo
             AND q.next_attempt_at <= now()
             AND (q.not_before IS NULL OR q.not_before <= now())
             AND (q.claimed_until IS NULL OR q.claimed_until + settle < now())
           LIMIT batch_size)) c;
    IF candidate_ids IS NULL THEN
        RETURN;
    END IF;

    INSERT INTO contactlog.outlook_queue (contact_log_id, inserted_with_follow_up)
    SELECT s.contact_log_id, s.inserted_with_follow_up
    FROM contactlog.outlook_sync s
    WHERE s.contact_log_id = ANY (candidate_ids)
    ON CONFLICT DO NOTHING;

    WITH picked AS (
        SELECT q.contact_log_id
        FROM contactlog.outlook_queue q
        WHERE q.contact_log_id = ANY (candidate_ids)
          AND (q.claimed_until IS NULL OR q.claimed_until + settle < now())
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE contactlog.outlook_queue q
        SET claim_token    = nextval('contactlog.outlook_claim_token_seq'),
            claimed_by     = worker,
            claimed_until  = now() + make_interval(secs => lease_seconds),
            -- A claim still standing belongs to a job that never ended (its daemon
            -- died, or lost the lease): what it sent is not all recorded (a delete
            -- performed, not yet forgotten), so this pass trusts no recorded hash.
            redo           = CASE WHEN q.claimed_until IS NOT NULL THEN q.redo + 1
                                  ELSE q.redo END,
            -- a parked log is only due again for a newer version: a fresh start
            attempts       = CASE WHEN q.failed_version IS NOT NULL THEN 0 ELSE q.attempts END,
            failed_version = NULL
        FROM picked
        WHERE q.contact_log_id = picked.contact_log_id
        RETURNING q.contact_log_id
    )
    SELECT array_agg(claimed.contact_log_id) INTO claimed_ids FROM claimed;

    RETURN QUERY
    SELECT q.contact_log_id, q.claim_token, coalesce(s.version, q.synced_version), q.redo,
           coalesce(s.resync_version > q.synced_version, false) OR q.redo > q.synced_redo,
           q.attempts,
           q.inserted_with_follow_up, q.synced_version > 0,
           l.id IS NOT NULL, l.status,
           CASE WHEN isfinite(l.next_contact_at)
                THEN floor(extract(epoch FROM l.next_contact_at))::bigint END,
           l.reason, l.contact_name, l.priority,
           creator.email, creator.time_zone,
           assignee.display_name, forwardee.display_name,
           ia.mailbox, ia.item_id, ia.change_key, ia.content_hash,
           ia.contact_log_id IS NOT NULL AND ia.item_id IS NULL,
           it.mailbox, it.item_id, it.change_key, it.content_hash,
           it.contact_log_id IS NOT NULL AND it.item_id IS NULL,
           -- what this one row cannot do (the log is parked, nothing else waits)
           CASE WHEN NOT isfinite(l.next_contact_at)
                THEN format('next_contact_at is %s: set a real date and time',
                            l.next_contact_at) END,
           nullif(btrim(owner.email), ''), owner.time_zone,
           coalesce(ia.deleted_in_outlook, false), coalesce(it.deleted_in_outlook, false)
    FROM contactlog.outlook_queue q
    LEFT JOIN contactlog.outlook_sync s ON s.contact_log_id = q.contact_log_id
    LEFT JOIN contactlog.contact_log l ON l.id = q.contact_log_id
    LEFT JOIN contactlog.employee creator ON creator.id = l.created_by
    LEFT JOIN contactlog.employee assignee ON assignee.id = l.assigned_to
    LEFT JOIN contactlog.employee forwardee ON forwardee.id = l.forward_to
    LEFT JOIN contactlog.employee owner
           ON owner.id = l.owner_id AND owner.active AND nullif(btrim(owner.email), '') IS NOT NULL
    LEFT JOIN contactlog.outlook_item ia
           ON ia.contact_log_id = q.contact_log_id AND ia.kind = 'appointment'
    LEFT JOIN contactlog.outlook_item it
           ON it.contact_log_id = q.contact_log_id AND it.kind = 'task'
    WHERE q.contact_log_id = ANY (claimed_ids)
    ORDER BY q.contact_log_id;
END
$$;

-- Seconds until the next queued log falls due (0: now), NULL when nothing waits.
CREATE OR REPLACE FUNCTION contactlog.followupd_next_due(settle_ms integer)
RETURNS double precision LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN count(*) = 0 THEN NULL
                ELSE greatest(0, extract(epoch FROM min(coalesce(d.due_at, now())) - now()))
           END
    FROM contactlog.followupd_due(settle_ms) d;
$$;

-- The fence every write goes through: locks the queue rows of log_ids (only the
-- daemon's own short statements ever hold them) and returns, per position, whether
-- tokens[n] is the log's current claim. For a stale token it records the redo.
CREATE OR REPLACE FUNCTION contactlog.followupd_fence(log_ids bigint[], tokens bigint[],
                                                      settle_ms integer)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    accepted boolean[];
BEGIN
    WITH locked AS (
        SELECT q.contact_log_id, q.claim_token
        FROM contactlog.outlook_queue q
        WHERE q.contact_log_id = ANY (log_ids)
        FOR UPDATE
    )
    SELECT array_agg(coalesce(l.claim_token = u.token, false) ORDER BY u.n) INTO accepted
    FROM unnest(log_ids, tokens) WITH ORDINALITY AS u(log_id, token, n)
    LEFT JOIN locked l ON l.contact_log_id = u.log_id;

    IF false = ANY (accepted) THEN   -- rare: a job that lost its claim
        UPDATE contactlog.outlook_queue q
        SET redo = q.redo + 1,
            not_before = greatest(q.not_before,
                                  now() + make_interval(secs => settle_ms / 1000.0))
        FROM unnest(log_ids, accepted) AS u(log_id, ok)
        WHERE q.contact_log_id = u.log_id AND NOT u.ok;
    END IF;
    RETURN coalesce(accepted, '{}');
END
$$;

-- A create is about to be sent: record an item row without id, so a lost answer
-- leads to a lookup, never to a second create. Returns, per position, whether
-- the claim still holds (send only then) and the create's Graph transactionId
-- (kept across retries of one create, new for a create made afresh).
CREATE OR REPLACE FUNCTION contactlog.followupd_begin_creates(log_ids bigint[], tokens bigint[],
                                                              item_kinds text[],
                                                              target_mailboxes text[],
                                                              settle_ms integer)
RETURNS TABLE (accepted boolean, transaction_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ok boolean[] := contactlog.followupd_fence(log_ids, tokens, settle_ms);
BEGIN
    INSERT INTO contactlog.outlook_item AS i
           (contact_log_id, kind, mailbox, create_started_at, transaction_id)
    SELECT DISTINCT ON (u.log_id, u.kind) u.log_id, u.kind, u.mailbox, now(),
           format('followupd-%s-%s-%s', u.log_id, u.kind, u.token)
    FROM unnest(log_ids, tokens, item_kinds, target_mailboxes) WITH ORDINALITY
         AS u(log_id, token, kind, mailbox, n)
    WHERE ok[u.n]
    ON CONFLICT (contact_log_id, kind) DO UPDATE
        SET mailbox = excluded.mailbox, create_started_at = now(), updated_at = now(),
            transaction_id = coalesce(i.transaction_id, excluded.transaction_id)
        WHERE i.item_id IS NULL;

    RETURN QUERY
    SELECT ok[u.n], CASE WHEN ok[u.n] THEN i.transaction_id END
    FROM unnest(log_ids, item_kinds) WITH ORDINALITY AS u(log_id, kind, n)
    LEFT JOIN contactlog.outlook_item i ON i.contact_log_id = u.log_id AND i.kind = u.kind
    ORDER BY u.n;
END
$$;

-- What Outlook holds now for a log and kind (after a create, update or adopted
-- lookup). A NULL content hash means "content unknown": the next pass updates.
CREATE OR REPLACE FUNCTION contactlog.followupd_record_items(log_ids bigint[], tokens bigint[],
                                                             item_kinds text[],
                                                             target_mailboxes text[],
                                                             new_item_ids text[],
                                                             new_change_keys text[],
                                                             new_content_hashes text[],
                                                             settle_ms integer)
RETURNS SETOF boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean[] := contactlog.followupd_fence(log_ids, tokens, settle_ms);
BEGIN
    INSERT INTO contactlog.outlook_item AS i
           (contact_log_id, kind, mailbox, item_id, change_key, content_hash)
    SELECT DISTINCT ON (u.log_id, u.kind) u.log_id, u.kind, u.mailbox, u.item_id,
           u.change_key, u.content_hash
    FROM unnest(log_ids, item_kinds, target_mailboxes, new_item_ids, new_change_keys,
                new_content_hashes) WITH ORDINALITY
         AS u(log_id, kind, mailbox, item_id, change_key, content_hash, n)
    WHERE ok[u.n]
    ORDER BY u.log_id, u.kind, u.n DESC
    ON CONFLICT (contact_log_id, kind) DO UPDATE
        SET mailbox = excluded.mailbox, item_id = excluded.item_id,
            change_key = excluded.change_key, content_hash = excluded.content_hash,
            -- another item than the one deleted in Outlook: it exists
            deleted_in_outlook = i.deleted_in_outlook
                                 AND i.item_id IS NOT DISTINCT FROM excluded.item_id,
            updated_at = now();
    RETURN QUERY SELECT unnest(ok);
END
$$;

-- The item is gone from Outlook (deleted by us, or not found by a lookup).
CREATE OR REPLACE FUNCTION contactlog.followupd_forget_items(log_ids bigint[], tokens bigint[],
                                                             item_kinds text[],
                                                             settle_ms integer)
RETURNS SETOF boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean[] := contactlog.followupd_fence(log_ids, tokens, settle_ms);
BEGIN
    DELETE FROM contactlog.outlook_item i
    USING unnest(log_ids, item_kinds) WITH ORDINALITY AS u(log_id, kind, n)
    WHERE ok[u.n] AND i.contact_log_id = u.log_id AND i.kind = u.kind;
    RETURN QUERY SELECT unnest(ok);
END
$$;

-- A pass is over: Outlook matches the log as of the version (and redo) claimed.
-- A change committed meanwhile has a higher version, so the log stays dirty and
-- is simply picked up again. Synced outbox rows go (never waiting for a CRM
-- transaction: a locked one is left for a later pass), so the outbox holds the
-- backlog, not the history.
CREATE OR REPLACE FUNCTION contactlog.followupd_finish(log_ids bigint[], tokens bigint[],
                                                       claimed_versions bigint[],
                                                       claimed_redos integer[],
                                                       settle_ms integer)
RETURNS SETOF boolean LANGUAGE plpgsql
-- Planned for the arrays at hand: a generic plan, made while the outbox was small,
-- scanned it whole on every call once it was not.
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    ok boolean[] := contactlog.followupd_fence(log_ids, tokens, settle_ms);
BEGIN
    UPDATE contactlog.outlook_queue q
    SET synced_version = greatest(q.synced_version, u.version),
        synced_redo = greatest(q.synced_redo, u.redo),
        attempts = 0, last_error = NULL, last_error_at = NULL, delivered_at = now(),
        claimed_until = NULL, claimed_by = NULL
    FROM unnest(log_ids, claimed_versions, claimed_redos) WITH ORDINALITY
         AS u(log_id, version, redo, n)
    WHERE ok[u.n] AND q.contact_log_id = u.log_id;

    DELETE FROM contactlog.outlook_sync s
    WHERE s.contact_log_id IN (
        SELECT s2.contact_log_id
        FROM contactlog.outlook_sync s2
        JOIN contactlog.outlook_queue q ON q.contact_log_id = s2.contact_log_id
        WHERE s2.contact_log_id = ANY (log_ids) AND s2.version <= q.synced_version
        FOR UPDATE OF s2 SKIP LOCKED);

    -- A deleted log whose items are gone leaves nothing behind.
    IF EXISTS (SELECT 1 FROM unnest(log_ids) AS u(log_id)
               WHERE NOT EXISTS (SELECT 1 FROM contactlog.contact_log l WHERE l.id = u.log_id)) THEN
        DELETE FROM contactlog.outlook_queue q
        WHERE q.contact_log_id = ANY (log_ids)
          AND q.claimed_until IS NULL AND q.redo <= q.synced_redo
          AND NOT EXISTS (SELECT 1 FROM contactlog.outlook_sync s
                          WHERE s.contact_log_id = q.contact_log_id)
          AND NOT EXISTS (SELECT 1 FROM contactlog.contact_log l WHERE l.id = q.contact_log_id)
          AND NOT EXISTS (SELECT 1 FROM contactlog.outlook_item i
                          WHERE i.contact_log_id = q.contact_log_id);
    END IF;
    RETURN QUERY SELECT unnest(ok);
END
$$;

-- Not yet: try again after delay_ms; park the log (at the version claimed) when
-- its attempts run out or the error is permanent. Returns (accepted, parked).
CREATE OR REPLACE FUNCTION contactlog.followupd_retry_later(log_ids bigint[], tokens bigint[],
                                                            claimed_versions bigint[],
                                                            claimed_redos integer[],
                                                            delays_ms bigint[], errors text[],
                                                            permanents boolean[],
                                                            max_attempts integer,
                                                            settle_ms integer)
RETURNS TABLE (accepted boolean, parked boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ok boolean[] := contactlog.followupd_fence(log_ids, tokens, settle_ms);
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT u.*, q.attempts + 1 AS tries,
               u.permanent OR q.attempts + 1 >= max_attempts AS park
        FROM unnest(log_ids, claimed_versions, claimed_redos, delays_ms, errors, permanents)
             WITH ORDINALITY AS u(log_id, version, redo, delay_ms, error, permanent, n)
        JOIN contactlog.outlook_queue q ON q.contact_log_id = u.log_id
        WHERE ok[u.n]
    ), done AS (
        UPDATE contactlog.outlook_queue q
        SET attempts = i.tries, last_error = i.error, last_error_at = now(),
            failed_version = CASE WHEN i.park THEN i.version END,
            synced_redo = CASE WHEN i.park THEN greatest(q.synced_redo, i.redo)
                               ELSE q.synced_redo END,
            next_attempt_at = CASE WHEN i.park THEN now()
                                   ELSE now() + make_interval(secs => i.delay_ms / 1000.0) END,
            claimed_until = NULL, claimed_by = NULL
        FROM input i
        WHERE q.contact_log_id = i.log_id
        RETURNING q.contact_log_id, i.park
    )
    SELECT ok[u.n], coalesce(d.park, false)
    FROM unnest(log_ids) WITH ORDINALITY AS u(log_id, n)
    LEFT JOIN done d ON d.contact_log_id = u.log_id AND ok[u.n]
    ORDER BY u.n;
END
$$;

-- Gives a claim back without counting an attempt, not to be worked on before
-- delay_ms: its mailbox (or the whole server) asked us to wait (the reason is kept
-- as the last error), the daemon is stopping (delay 0), or the log is already being
-- worked on here.
DROP FUNCTION IF EXISTS contactlog.followupd_release(bigint[], bigint[], bigint[], integer);
CREATE OR REPLACE FUNCTION contactlog.followupd_release(log_ids bigint[], tokens bigint[],
                                                        delays_ms bigint[], errors text[],
                                                        settle_ms integer)
RETURNS SETOF boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean[] := contactlog.followupd_fence(log_ids, tokens, settle_ms);
BEGIN
    UPDATE contactlog.outlook_queue q
    SET next_attempt_at = greatest(q.next_attempt_at,
                                   now() + make_interval(secs => u.delay_ms / 1000.0)),
        last_error = coalesce(u.error, q.last_error),
        last_error_at = CASE WHEN u.error IS NULL THEN q.last_error_at ELSE now() END,
        claimed_until = NULL, claimed_by = NULL
    FROM unnest(log_ids, delays_ms, errors) WITH ORDINALITY AS u(log_id, delay_ms, error, n)
    WHERE ok[u.n] AND q.contact_log_id = u.log_id;
    RETURN QUERY SELECT unnest(ok);
END
$$;

-- The heartbeat: renews the leases of the jobs alive in the daemon, in one
-- statement. Returns, per position, whether the claim is still this job's (a lost
-- one is fenced like any stale write).
CREATE OR REPLACE FUNCTION contactlog.followupd_renew(log_ids bigint[], tokens bigint[],
                                                      lease_seconds integer,
                                                      settle_ms integer)
RETURNS SETOF boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean[] := contactlog.followupd_fence(log_ids, tokens, settle_ms);
BEGIN
    UPDATE contactlog.outlook_queue q
    SET claimed_until = now() + make_interval(secs => lease_seconds)
    FROM unnest(log_ids) WITH ORDINALITY AS u(log_id, n)
    WHERE ok[u.n] AND q.contact_log_id = u.log_id;
    RETURN QUERY SELECT unnest(ok);
END
$$;

-- Workers that hold claims, for a daemon starting on the same host to find the
-- claims of an earlier process that is gone.
CREATE OR REPLACE FUNCTION contactlog.followupd_claimants(worker_prefix text)
RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT DISTINCT q.claimed_by FROM contactlog.outlook_queue q
    WHERE q.claimed_until IS NOT NULL
      AND left(q.claimed_by, length(worker_prefix)) = worker_prefix;
$$;

-- The claims of a process that is gone lapse now (and become claimable after the
-- settle time, when nothing it sent can land any more).
CREATE OR REPLACE FUNCTION contactlog.followupd_take_over(workers text[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE contactlog.outlook_queue q
    SET claimed_until = least(q.claimed_until, now())
    WHERE q.claimed_until IS NOT NULL AND q.claimed_by = ANY (workers);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- A new version of a log in the outbox (for followupctl: retry, resync). Waits
-- for a CRM transaction that holds the row, as the CRM's own edits do.
CREATE OR REPLACE FUNCTION contactlog.followupd_bump(log_id bigint, resync boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v bigint := nextval('contactlog.outlook_version_seq');
BEGIN
    INSERT INTO contactlog.outlook_sync AS s (contact_log_id, version, resync_version)
    VALUES (log_id, v, CASE WHEN resync THEN v END)
    ON CONFLICT (contact_log_id) DO UPDATE
        SET version = nextval('contactlog.outlook_version_seq'),
            resync_version = CASE WHEN resync THEN currval('contactlog.outlook_version_seq')
                                  ELSE s.resync_version END,
            changed_at = now();
    PERFORM pg_notify('followupd', log_id::text);
END
$$;

-- followupctl retry: parked logs (all, or one) go back into the queue: a newer
-- version is not parked, and its first claim starts its attempts afresh.
CREATE OR REPLACE FUNCTION contactlog.followupd_requeue_failed(log_id bigint DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    parked bigint;
    n integer := 0;
BEGIN
    FOR parked IN
        SELECT q.contact_log_id FROM contactlog.outlook_queue q
        LEFT JOIN contactlog.outlook_sync s ON s.contact_log_id = q.contact_log_id
        WHERE q.failed_version IS NOT NULL
          AND q.failed_version >= coalesce(s.version, q.failed_version)
          AND (followupd_requeue_failed.log_id IS NULL
               OR q.contact_log_id = followupd_requeue_failed.log_id)
        ORDER BY q.contact_log_id
    LOOP
        PERFORM contactlog.followupd_bump(parked, false);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- followupctl resync: make Outlook match the log again, even if we believe it
-- does. The resync is a version of its own: a pass running now finishes an older
-- version, so the forced pass still comes after it.
CREATE OR REPLACE FUNCTION contactlog.followupd_resync(log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM contactlog.contact_log WHERE id = log_id)
       AND NOT EXISTS (SELECT 1 FROM contactlog.outlook_item WHERE contact_log_id = log_id) THEN
        RETURN false;
    END IF;
    -- An item its user deleted in Outlook comes back too (SPEC §7).
    UPDATE contactlog.outlook_item i
    SET deleted_in_outlook = false, updated_at = now()
    WHERE i.contact_log_id = followupd_resync.log_id AND i.deleted_in_outlook;
    PERFORM contactlog.followupd_bump(log_id, true);
    RETURN true;
END
$$;

-- followupctl flush: logs waiting out a retry back-off (all, or one) are due now
-- (postfix's postqueue -f). Parked logs are not touched (that is retry), nor
-- claimed ones; a hold the server asked for (BackOffMilliseconds, Retry-After) is
-- kept in the daemon's memory and still honoured. Returns how many logs.
CREATE OR REPLACE FUNCTION contactlog.followupd_flush(log_id bigint DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE contactlog.outlook_queue q
    SET next_attempt_at = now()
    WHERE q.next_attempt_at > now()
      AND q.claimed_until IS NULL
      AND (followupd_flush.log_id IS NULL OR q.contact_log_id = followupd_flush.log_id)
      AND (q.redo > q.synced_redo
           OR EXISTS (SELECT 1 FROM contactlog.outlook_sync s
                      WHERE s.contact_log_id = q.contact_log_id
                        AND s.version > q.synced_version))
      -- not parked (as in followupd_log_state: a newer version is not parked)
      AND (q.failed_version IS NULL
           OR q.failed_version < coalesce((SELECT s.version FROM contactlog.outlook_sync s
                                           WHERE s.contact_log_id = q.contact_log_id),
                                          q.failed_version));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('followupd', coalesce(log_id::text, 'flush'));
    END IF;
    RETURN n;
END
$$;
