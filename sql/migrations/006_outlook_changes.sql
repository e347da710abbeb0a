-- ---------------------------------------------------------------------------
-- Migration 6: Outlook → CRM (issue 17, SPEC §7, docs/architecture.md "Outlook →
-- CRM"). Per watched mailbox its position in Exchange (the truth of what was read
-- already); every change read back from Outlook, applied or refused, once; and
-- items deleted in Outlook, which the one-way path must not recreate.
-- ---------------------------------------------------------------------------
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM contactlog.schema_version WHERE version = 6) THEN
        RETURN;
    END IF;

    -- One row per mailbox followupd watches (its address in lower case, blanks
    -- trimmed), written only by followupd's functions. The positions are the
    -- truth: NULL means "read that folder afresh". subscription_id and watermark
    -- (EWS) only make changes arrive sooner.
    CREATE TABLE contactlog.outlook_watch (
        mailbox           text PRIMARY KEY,
        calendar_position text,          -- EWS SyncState or Graph deltaLink
        tasks_position    text,          -- of the tasks folder / To Do list
        subscription_id   text,          -- EWS streaming or pull subscription
        watermark         text,          -- EWS, of that subscription
        last_change_at    timestamptz,   -- last change read back (applied or not)
        last_sync_at      timestamptz,   -- last position stored
        last_error        text,
        last_error_at     timestamptz,
        -- a folder is to be read afresh (no position yet, or Exchange could not
        -- resume from it): compare every tagged item with outlook_item
        resync_needed     boolean NOT NULL DEFAULT true
    );

    -- Every change read back from Outlook that was applied or refused (view
    -- contactlog.outlook_changes). A page read twice applies once: the same item,
    -- version (change key) and kind of change is one row. change_key is '' when
    -- Exchange gives none (a deleted item: then the last key we knew).
    CREATE TABLE contactlog.outlook_change_log (
        id             bigserial PRIMARY KEY,
        contact_log_id bigint NOT NULL,      -- no FK: outlives a deleted log
        employee_id    bigint,               -- the mailbox's employee; NULL: none
        mailbox        text NOT NULL,
        kind           text NOT NULL CHECK (kind IN ('appointment', 'task')),
        item_id        text NOT NULL,
        change_key     text NOT NULL,
        what           text NOT NULL CHECK (what IN ('completed', 'moved', 'deleted')),
        old_value      text,
        new_value      text,
        applied        boolean NOT NULL,
        reason         text,                 -- why it was refused
        at             timestamptz NOT NULL DEFAULT now(),
        -- The outbox version this change made (applied: the log's change; refused:
        -- the forced pass), and the newest CRM version not yet in Outlook when it
        -- was made (the conflict rule: versions of our own making are no conflict).
        outbox_version bigint,
        crm_version    bigint,
        CONSTRAINT outlook_change_log_once UNIQUE (item_id, change_key, what),
        CONSTRAINT outlook_change_log_reason CHECK (applied OR reason IS NOT NULL)
    );
    CREATE INDEX outlook_change_log_log_idx
        ON contactlog.outlook_change_log (contact_log_id, id);

    -- Deleted in Outlook by its user: the one-way path neither updates, recreates
    -- nor moves it, until followupctl resync or the log's next change of date in
    -- the CRM clears the flag.
    ALTER TABLE contactlog.outlook_item
        ADD COLUMN deleted_in_outlook boolean NOT NULL DEFAULT false;

    -- A change read back names its item by id; the watched mailboxes are read
    -- one index probe each (10,000 mailboxes: 10,000 probes, not a scan of every
    -- item); the mailbox's employee by address.
    CREATE INDEX outlook_item_item_id_idx ON contactlog.outlook_item (item_id)
        WHERE item_id IS NOT NULL;
    CREATE INDEX outlook_item_watch_idx ON contactlog.outlook_item (lower(btrim(mailbox)))
        WHERE item_id IS NOT NULL AND NOT deleted_in_outlook;
    CREATE INDEX employee_mailbox_idx ON contactlog.employee (lower(btrim(email)));

    INSERT INTO contactlog.schema_version (version, description)
    VALUES (6, 'Outlook to CRM: watched mailboxes, changes read back, items deleted in Outlook');
END
$migration$;
