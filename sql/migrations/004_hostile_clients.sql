-- ---------------------------------------------------------------------------
-- Migration 4: ownership against a hostile client (issue 14). priority_rank, the
-- sort index contact_log_status_priority_idx's expression, gets an SQL-standard
-- body: bound to pg_catalog's "=" when created. The text body was parsed again
-- with the search_path of whoever wrote a log, so a schema of theirs holding an
-- "=" of its own would have decided what the shared index stores. Same values:
-- the index stays valid as it is.
-- ---------------------------------------------------------------------------
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM contactlog.schema_version WHERE version = 4) THEN
        RETURN;
    END IF;

    CREATE OR REPLACE FUNCTION contactlog.priority_rank(priority text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN priority OPERATOR(pg_catalog.=) 'low' THEN 0
                WHEN priority OPERATOR(pg_catalog.=) 'normal' THEN 1
                ELSE 2 END;

    INSERT INTO contactlog.schema_version (version, description)
    VALUES (4, 'ownership against a hostile client: priority_rank bound when created');
END
$migration$;
