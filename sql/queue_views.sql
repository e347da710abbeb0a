-- Views on followupd's queue, for followupctl (status, failed, mailboxes), the
-- daemon's STATUS= line, monitoring and tests. Replaced on every run.

-- Each log's place in the queue, for followupctl, monitoring and tests.
CREATE OR REPLACE VIEW contactlog.followupd_log_state AS
SELECT coalesce(q.contact_log_id, s.contact_log_id) AS contact_log_id,
       coalesce(s.version, q.synced_version) AS version,
       coalesce(q.synced_version, 0) AS synced_version,
       coalesce(q.failed_version IS NOT NULL
                AND q.failed_version >= coalesce(s.version, q.failed_version), false) AS failed,
       (coalesce(s.version, 0) > coalesce(q.synced_version, 0)
        OR coalesce(q.redo > q.synced_redo, false)) AS dirty,
       coalesce(q.attempts, 0) AS attempts,
       q.last_error, q.last_error_at, q.next_attempt_at, q.not_before,
       q.claimed_by, q.claimed_until, q.delivered_at, s.changed_at
FROM contactlog.outlook_queue q
FULL JOIN contactlog.outlook_sync s ON s.contact_log_id = q.contact_log_id;

-- The queue's depth for sd_notify STATUS= and the metrics (every few seconds):
-- read from the outbox, which holds the backlog only, and from partial indexes of
-- the daemon's table; its cost follows the backlog, never the history.
CREATE OR REPLACE VIEW contactlog.followupd_queue_depth AS
SELECT (SELECT count(*)
        FROM contactlog.outlook_sync s
        LEFT JOIN contactlog.outlook_queue q ON q.contact_log_id = s.contact_log_id
        WHERE q.contact_log_id IS NULL
           OR (s.version > q.synced_version
               AND (q.failed_version IS NULL OR q.failed_version < s.version)))
     + (SELECT count(*)
        FROM contactlog.outlook_queue q
        WHERE q.redo > q.synced_redo
          AND NOT EXISTS (SELECT 1 FROM contactlog.outlook_sync s
                          WHERE s.contact_log_id = q.contact_log_id
                            AND s.version > q.synced_version))                AS pending,
       (SELECT count(*)
        FROM contactlog.outlook_queue q
        LEFT JOIN contactlog.outlook_sync s ON s.contact_log_id = q.contact_log_id
        WHERE q.failed_version IS NOT NULL
          AND q.failed_version >= coalesce(s.version, q.failed_version))       AS failed,
       coalesce((SELECT extract(epoch FROM now() - min(s.changed_at))::bigint
                 FROM contactlog.outlook_sync s
                 LEFT JOIN contactlog.outlook_queue q ON q.contact_log_id = s.contact_log_id
                 WHERE q.contact_log_id IS NULL
                    OR (s.version > q.synced_version
                        AND (q.failed_version IS NULL OR q.failed_version < s.version))),
                0)                                                              AS oldest_pending_seconds,
       -- DefaultMessageSystem as stored when it turns delivery off (NULL: on)
       (SELECT coalesce(a.value, '')
        FROM contactlog.effective_attribute a
        WHERE a.name = 'DefaultMessageSystem'
          AND a.effective_value IS DISTINCT FROM 'Outlook Mail')               AS delivery_off;

-- Items not (yet) in their log's home mailbox (docs/architecture.md "Moves between
-- mailboxes"; the rule of daemon/reconcile.c, stated again for counting): after
-- FollowUpMailbox is switched or ownership moves, the queue moves them; followupctl
-- status shows how many are left. Completed logs' items stay where they are, and
-- with SyncUpdates = 0 nothing moves, nor does an item deleted in Outlook (it is
-- not there; SPEC §7).
CREATE OR REPLACE VIEW contactlog.followupd_misplaced AS
WITH settings AS (
    SELECT max(effective_value) FILTER (WHERE name = 'FollowUpMailbox') AS follow_up_mailbox,
           max(effective_value) FILTER (WHERE name = 'SyncUpdates') AS sync_updates
    FROM contactlog.effective_attribute
)
SELECT i.contact_log_id, i.kind, i.mailbox, h.home
FROM contactlog.outlook_item i
JOIN contactlog.contact_log l ON l.id = i.contact_log_id AND l.status <> 'completed'
JOIN contactlog.employee creator ON creator.id = l.created_by
LEFT JOIN contactlog.employee owner ON owner.id = l.owner_id AND owner.active
CROSS JOIN settings st
CROSS JOIN LATERAL (
    SELECT CASE WHEN st.follow_up_mailbox = 'owner' AND nullif(btrim(owner.email), '') IS NOT NULL
                THEN btrim(owner.email) ELSE btrim(creator.email) END AS home) h
WHERE st.sync_updates = '1'
  AND NOT i.deleted_in_outlook
  AND lower(btrim(i.mailbox)) IS DISTINCT FROM lower(h.home);

-- Queue figures for followupctl status.
CREATE OR REPLACE VIEW contactlog.followupd_status AS
SELECT d.pending,
       (SELECT count(*) FROM contactlog.outlook_queue
        WHERE claimed_until > now())                                            AS in_flight,
       d.failed,
       (SELECT count(*) FROM contactlog.outlook_item WHERE item_id IS NOT NULL) AS delivered,
       (SELECT extract(epoch FROM now() - min(s.changed_at))::bigint
        FROM contactlog.outlook_sync s
        LEFT JOIN contactlog.outlook_queue q ON q.contact_log_id = s.contact_log_id
        WHERE q.contact_log_id IS NULL
           OR (s.version > q.synced_version
               AND (q.failed_version IS NULL OR q.failed_version < s.version))) AS oldest_pending_seconds,
       (SELECT last_error FROM contactlog.outlook_queue
        WHERE last_error IS NOT NULL ORDER BY last_error_at DESC NULLS LAST LIMIT 1) AS last_error,
       (SELECT count(*) FROM contactlog.followupd_misplaced)                   AS items_to_move,
       d.delivery_off
FROM contactlog.followupd_queue_depth d;

-- followupctl failed: the parked logs (postfix's mailq), each with the mailbox
-- its items are (or would be) in and why it was parked.
CREATE OR REPLACE VIEW contactlog.followupd_failed AS
SELECT st.contact_log_id,
       coalesce((SELECT min(i.mailbox) FROM contactlog.outlook_item i
                 WHERE i.contact_log_id = st.contact_log_id), e.email) AS mailbox,
       st.attempts,
       st.last_error AS reason,
       st.last_error_at AS failed_at
FROM contactlog.followupd_log_state st
LEFT JOIN contactlog.contact_log l ON l.id = st.contact_log_id
LEFT JOIN contactlog.employee e ON e.id = l.created_by
WHERE st.failed;

-- followupctl mailboxes: per mailbox (the creator's email, or where a log's items
-- are), which staff members' Outlook is not being served and why. A throttling
-- hold is in the daemon's memory only, so it is not here.
CREATE OR REPLACE VIEW contactlog.followupd_mailboxes AS
WITH logs AS (
    SELECT coalesce((SELECT min(i.mailbox) FROM contactlog.outlook_item i
                     WHERE i.contact_log_id = st.contact_log_id), e.email) AS mailbox,
           st.dirty, st.failed, st.delivered_at, st.last_error, st.last_error_at
    FROM contactlog.followupd_log_state st
    LEFT JOIN contactlog.contact_log l ON l.id = st.contact_log_id
    LEFT JOIN contactlog.employee e ON e.id = l.created_by
), per_log AS (
    SELECT mailbox,
           count(*) FILTER (WHERE dirty AND NOT failed) AS pending,
           count(*) FILTER (WHERE failed) AS failed,
           max(delivered_at) AS last_success,
           (array_agg(last_error ORDER BY last_error_at DESC NULLS LAST)
                FILTER (WHERE last_error IS NOT NULL))[1] AS last_error,
           max(last_error_at) FILTER (WHERE last_error IS NOT NULL) AS last_error_at
    FROM logs
    WHERE mailbox IS NOT NULL
    GROUP BY mailbox
), items AS (
    SELECT mailbox, count(*) AS items_held
    FROM contactlog.outlook_item
    WHERE item_id IS NOT NULL
    GROUP BY mailbox
)
SELECT coalesce(p.mailbox, i.mailbox) AS mailbox,
       coalesce(i.items_held, 0) AS items_held,
       coalesce(p.pending, 0) AS pending,
       coalesce(p.failed, 0) AS failed,
       p.last_success, p.last_error, p.last_error_at,
       -- Outlook -> CRM (SyncFromOutlook = 1): where reading back stands. 'afresh':
       -- the next read takes the whole folder (new, or Exchange forgot the position);
       -- 'ok': both folders have a position; 'error': the last read failed.
       CASE WHEN w.mailbox IS NULL THEN NULL
            WHEN w.last_error IS NOT NULL THEN 'error'
            WHEN w.resync_needed OR w.calendar_position IS NULL
                 OR w.tasks_position IS NULL THEN 'afresh'
            ELSE 'ok' END AS sync_position,
       w.last_sync_at, w.last_change_at,
       w.last_error AS sync_error
FROM per_log p
FULL JOIN items i ON i.mailbox = p.mailbox
LEFT JOIN contactlog.outlook_watch w
       ON w.mailbox = lower(btrim(coalesce(p.mailbox, i.mailbox)));

