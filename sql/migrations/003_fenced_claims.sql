-- ---------------------------------------------------------------------------
-- Migration 3: fenced claims (issue 11). The outbox (outlook_sync) keeps only
-- what the CRM's trigger writes; the daemon's bookkeeping moves to outlook_queue,
-- which only followupd's functions write, so a CRM transaction holding a lock on
-- a log never holds up the daemon. Versions come from one sequence: they only
-- grow, also across an outbox row that was deleted and made again.
-- ---------------------------------------------------------------------------
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM contactlog.schema_version WHERE version = 3) THEN
        RETURN;
    END IF;

    CREATE SEQUENCE contactlog.outlook_version_seq;
    PERFORM setval('contactlog.outlook_version_seq',
                   greatest(1, (SELECT max(version) FROM contactlog.outlook_sync)));
    CREATE SEQUENCE contactlog.outlook_claim_token_seq;

    CREATE TABLE contactlog.outlook_queue (
        contact_log_id          bigint PRIMARY KEY,
        synced_version          bigint NOT NULL DEFAULT 0,
        inserted_with_follow_up boolean NOT NULL DEFAULT false,
        attempts                integer NOT NULL DEFAULT 0,
        next_attempt_at         timestamptz NOT NULL DEFAULT now(),
        -- no pass before this: a request of an earlier job may still land
        not_before              timestamptz,
        last_error              text,
        last_error_at           timestamptz,
        failed_version          bigint,      -- parked at this version
        delivered_at            timestamptz,
        -- bumped by a fenced-out write: one more pass, content hashes ignored
        redo                    integer NOT NULL DEFAULT 0,
        synced_redo             integer NOT NULL DEFAULT 0,
        claim_token             bigint,
        claimed_by              text,
        claimed_until           timestamptz  -- NULL: not claimed
    );
    CREATE INDEX outlook_queue_redo_idx ON contactlog.outlook_queue (contact_log_id)
        WHERE redo > synced_redo;
    CREATE INDEX outlook_queue_failed_idx ON contactlog.outlook_queue (contact_log_id)
        WHERE failed_version IS NOT NULL;
    CREATE INDEX outlook_queue_claimed_idx ON contactlog.outlook_queue (claimed_by)
        WHERE claimed_until IS NOT NULL;

    INSERT INTO contactlog.outlook_queue
           (contact_log_id, synced_version, inserted_with_follow_up, attempts,
            next_attempt_at, last_error, last_error_at, failed_version, delivered_at)
    SELECT contact_log_id, synced_version, inserted_with_follow_up, attempts,
           next_attempt_at, last_error, CASE WHEN last_error IS NOT NULL THEN changed_at END,
           CASE WHEN failed THEN version END, delivered_at
    FROM contactlog.outlook_sync;

    DROP VIEW IF EXISTS contactlog.followupd_status;
    DROP INDEX IF EXISTS contactlog.outlook_sync_due_idx;
    DELETE FROM contactlog.outlook_sync WHERE version <= synced_version;
    ALTER TABLE contactlog.outlook_sync
        DROP COLUMN synced_version, DROP COLUMN next_attempt_at, DROP COLUMN attempts,
        DROP COLUMN claimed_until, DROP COLUMN claimed_by, DROP COLUMN claimed_by_pid,
        DROP COLUMN last_error, DROP COLUMN failed, DROP COLUMN delivered_at,
        ADD COLUMN resync_version bigint,
        ALTER COLUMN version SET DEFAULT nextval('contactlog.outlook_version_seq');

    -- Graph's transactionId for an event create: the same for every retry of one
    -- create, new for a create made afresh.
    ALTER TABLE contactlog.outlook_item ADD COLUMN transaction_id text;

    DROP FUNCTION IF EXISTS contactlog.followupd_claim(integer, integer, text);
    DROP FUNCTION IF EXISTS contactlog.followupd_next_due();
    DROP FUNCTION IF EXISTS contactlog.followupd_forget_item(bigint, text);
    DROP FUNCTION IF EXISTS contactlog.followupd_begin_creates(bigint[], text[], text[]);
    DROP FUNCTION IF EXISTS contactlog.followupd_record_items(bigint[], text[], text[], text[], text[], text[]);
    DROP FUNCTION IF EXISTS contactlog.followupd_finish_many(bigint[], bigint[]);
    DROP FUNCTION IF EXISTS contactlog.followupd_retry_later(bigint, bigint, text, integer, boolean);
    DROP FUNCTION IF EXISTS contactlog.followupd_release(bigint);
    DROP FUNCTION IF EXISTS contactlog.followupd_defer(bigint, bigint);

    INSERT INTO contactlog.schema_version (version, description)
    VALUES (3, 'fenced claims: outlook_queue, versions from a sequence');
END
$migration$;
