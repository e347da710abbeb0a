-- ---------------------------------------------------------------------------
-- Migration 2: ownership and the read side (issue 5): sort keys, indexes for
-- contactlog.list_logs and contactlog.open_follow_ups, and the log counts.
-- ---------------------------------------------------------------------------
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM contactlog.schema_version WHERE version = 2) THEN
        RETURN;
    END IF;

    -- Sort order of priority (low, normal, high). An index is built on it, so it
    -- lives here and not in the code part: changing it means a new migration
    -- that also rebuilds the index.
    CREATE FUNCTION contactlog.priority_rank(priority text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
    $$ SELECT CASE priority WHEN 'low' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END $$;

    -- One index per sort key of contactlog.list_logs, each led by status and
    -- ending in id (the tie-break): a page is read from one range per status, in
    -- page order (either direction), merged, so it costs page_size + offset
    -- index entries whatever the filter and however the data is spread.
    CREATE INDEX contact_log_status_created_at_idx
        ON contactlog.contact_log (status, created_at, id);
    CREATE INDEX contact_log_status_next_contact_at_idx
        ON contactlog.contact_log (status, next_contact_at, id);
    CREATE INDEX contact_log_status_contact_name_idx
        ON contactlog.contact_log (status, contact_name, id);
    CREATE INDEX contact_log_status_priority_idx
        ON contactlog.contact_log (status, contactlog.priority_rank(priority), id);
    CREATE INDEX contact_log_status_id_idx ON contactlog.contact_log (status, id);

    -- Owner search and the owner sort go from the (few) employees, in name order
    -- for the sort, to their logs: by id, and newest first for the default sort.
    CREATE INDEX contact_log_owner_idx ON contactlog.contact_log (owner_id, id)
        WHERE owner_id IS NOT NULL;
    CREATE INDEX contact_log_owner_created_at_idx
        ON contactlog.contact_log (owner_id, created_at, id)
        WHERE owner_id IS NOT NULL;
    CREATE INDEX employee_display_name_idx ON contactlog.employee (display_name, id);

    -- contactlog.open_follow_ups in date order.
    CREATE INDEX contact_log_open_follow_up_idx ON contactlog.contact_log (next_contact_at, id)
        WHERE status IN ('open', 'in_progress') AND next_contact_at IS NOT NULL;

    -- How many logs there are per status, owner and "has a follow-up", kept by
    -- statement triggers, so totals and contactlog.summary read one row per key
    -- (about a thousand) instead of counting every log (40 ms and more at
    -- 1,000,000 logs; see bench/README.md).
    --
    -- Several rows may exist per key and the count is their sum: one base row
    -- (is_base), updated by a writer that can lock it without waiting, and delta
    -- rows appended by writers that found it locked (or that run above READ
    -- COMMITTED). The next writer holding the base row folds the deltas into it.
    -- So counting never makes two transactions wait for each other or deadlock.
    CREATE TABLE contactlog.contact_log_tally (
        status    text    NOT NULL,
        owner_id  bigint,                   -- no FK: a count, not a reference
        follow_up boolean NOT NULL,         -- next_contact_at IS NOT NULL
        is_base   boolean NOT NULL,
        n         bigint  NOT NULL
    );
    -- owner_id is NULL exactly when status is not 'in_progress' (the log table's
    -- constraint), so coalesce(owner_id, 0) never makes two keys collide.
    CREATE UNIQUE INDEX contact_log_tally_base_key
        ON contactlog.contact_log_tally (status, coalesce(owner_id, 0), follow_up)
        WHERE is_base;

    -- A row of contactlog.list_logs (a type, not RETURNS TABLE: the output column
    -- "status" would clash with the parameter "status"). Extend it with ALTER TYPE
    -- ... ADD ATTRIBUTE in a later migration.
    CREATE TYPE contactlog.log_list_row AS (
        id               bigint,
        created_at       timestamptz,
        updated_at       timestamptz,
        created_by       bigint,
        created_by_name  text,
        contact_name     text,
        status           text,
        owner_id         bigint,
        owner_name       text,
        priority         text,
        assigned_to      bigint,
        assigned_to_name text,
        forward_to       bigint,
        forward_to_name  text,
        reason           text,
        next_contact_at  timestamptz,
        total_count      bigint          -- rows matching the filters, on every row
    );

    -- Count the logs that already exist; writers wait until this transaction has
    -- also installed the triggers that keep the count (in the code part below).
    LOCK TABLE contactlog.contact_log IN SHARE ROW EXCLUSIVE MODE;
    INSERT INTO contactlog.contact_log_tally (status, owner_id, follow_up, is_base, n)
    SELECT status, owner_id, next_contact_at IS NOT NULL, true, count(*)
    FROM contactlog.contact_log
    GROUP BY 1, 2, 3;

    INSERT INTO contactlog.schema_version (version, description)
    VALUES (2, 'ownership and the read side: sort indexes, contact log counts');
END
$migration$;
