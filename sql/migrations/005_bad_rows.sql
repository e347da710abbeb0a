-- ---------------------------------------------------------------------------
-- Migration 5: one bad row never stops the queue (issue 12). A follow-up of
-- 'infinity' was accepted by every constraint and made every claim fail. New and
-- changed rows must now have a finite date; rows that already hold one are left
-- as they are (NOT VALID) and parked with the reason, so nothing else waits.
-- ---------------------------------------------------------------------------
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM contactlog.schema_version WHERE version = 5) THEN
        RETURN;
    END IF;

    ALTER TABLE contactlog.contact_log ADD CONSTRAINT contact_log_next_contact_at_finite
        CHECK (next_contact_at IS NULL OR isfinite(next_contact_at)) NOT VALID;

    INSERT INTO contactlog.outlook_queue AS q
           (contact_log_id, failed_version, last_error, last_error_at, next_attempt_at)
    SELECT l.id, coalesce(s.version, 0),
           format('next_contact_at is %s: set a real date and time', l.next_contact_at),
           now(), now()
    FROM contactlog.contact_log l
    LEFT JOIN contactlog.outlook_sync s ON s.contact_log_id = l.id
    WHERE NOT isfinite(l.next_contact_at)
    ON CONFLICT (contact_log_id) DO UPDATE
        SET failed_version = excluded.failed_version, last_error = excluded.last_error,
            last_error_at = now();

    INSERT INTO contactlog.schema_version (version, description)
    VALUES (5, 'next_contact_at must be finite; existing offenders parked');
END
$migration$;
