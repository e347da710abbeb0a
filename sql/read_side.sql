-- The CRM's read side: counts kept by triggers, the open follow-ups, the start
-- page's counters and the paged, filtered list of logs a front end shows.
-- Replaced on every run of install.sql, after sql/crm.sql.

-- ---- Counting logs (contactlog.contact_log_tally, see migration 2) ----

-- Adds delta to the count of one key without ever waiting for another
-- transaction: update the base row if it can be locked at once (folding in the
-- deltas others appended meanwhile), create it if it does not exist yet, else
-- append a delta row. Above READ COMMITTED only appends (no serialization
-- failures from counting).
CREATE OR REPLACE FUNCTION contactlog.contact_log_tally_add(k_status text, k_owner_id bigint,
                                                            k_follow_up boolean, delta bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
BEGIN
    IF delta = 0 THEN
        RETURN;
    END IF;
    IF current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM 1 FROM contactlog.contact_log_tally t
        WHERE t.is_base AND t.status = k_status AND t.follow_up = k_follow_up
          AND t.owner_id IS NOT DISTINCT FROM k_owner_id
        FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            -- Only the holder of the base row deletes deltas of its key.
            WITH folded AS (
                DELETE FROM contactlog.contact_log_tally t
                WHERE NOT t.is_base AND t.status = k_status AND t.follow_up = k_follow_up
                  AND t.owner_id IS NOT DISTINCT FROM k_owner_id
                RETURNING t.n
            )
            UPDATE contactlog.contact_log_tally t
            SET n = t.n + delta + coalesce((SELECT sum(f.n) FROM folded f), 0)
            WHERE t.is_base AND t.status = k_status AND t.follow_up = k_follow_up
              AND t.owner_id IS NOT DISTINCT FROM k_owner_id;
            RETURN;
        END IF;
        -- No base row yet (or it is locked). Whoever creates base rows holds this
        -- advisory lock until commit (one lock, however many keys), so the INSERT
        -- never waits for another transaction's uncommitted base row.
        IF pg_try_advisory_xact_lock(hashtext('contactlog.contact_log_tally'))
           AND NOT EXISTS (SELECT 1 FROM contactlog.contact_log_tally t
                           WHERE t.is_base AND t.status = k_status
                             AND t.follow_up = k_follow_up
                             AND t.owner_id IS NOT DISTINCT FROM k_owner_id) THEN
            INSERT INTO contactlog.contact_log_tally (status, owner_id, follow_up, is_base, n)
            VALUES (k_status, k_owner_id, k_follow_up, true, delta)
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    INSERT INTO contactlog.contact_log_tally (status, owner_id, follow_up, is_base, n)
    VALUES (k_status, k_owner_id, k_follow_up, false, delta);
END
$$;

-- After each INSERT, UPDATE or DELETE statement: the net change per key, from
-- the statement's transition tables (a bulk load of a million logs is a few
-- hundred keys). An UPDATE that changes no key (notes, reason...) writes nothing.
CREATE OR REPLACE FUNCTION contactlog.contact_log_tally_track() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
DECLARE
    k record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR k IN SELECT r.status, r.owner_id, r.next_contact_at IS NOT NULL AS follow_up,
                        count(*) AS delta
                 FROM new_rows r GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LOOP
            PERFORM contactlog.contact_log_tally_add(k.status, k.owner_id, k.follow_up, k.delta);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR k IN SELECT r.status, r.owner_id, r.next_contact_at IS NOT NULL AS follow_up,
                        -count(*) AS delta
                 FROM old_rows r GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LOOP
            PERFORM contactlog.contact_log_tally_add(k.status, k.owner_id, k.follow_up, k.delta);
        END LOOP;
    ELSE
        FOR k IN SELECT c.status, c.owner_id, c.follow_up, sum(c.delta)::bigint AS delta
                 FROM (SELECT r.status, r.owner_id, r.next_contact_at IS NOT NULL AS follow_up,
                              1 AS delta
                       FROM new_rows r
                       UNION ALL
                       SELECT r.status, r.owner_id, r.next_contact_at IS NOT NULL, -1
                       FROM old_rows r) c
                 GROUP BY 1, 2, 3 HAVING sum(c.delta) <> 0 ORDER BY 1, 2, 3 LOOP
            PERFORM contactlog.contact_log_tally_add(k.status, k.owner_id, k.follow_up, k.delta);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION contactlog.contact_log_tally_clear() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp AS $$
BEGIN
    DELETE FROM contactlog.contact_log_tally;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS contact_log_tally_insert ON contactlog.contact_log;
CREATE TRIGGER contact_log_tally_insert
    AFTER INSERT ON contactlog.contact_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION contactlog.contact_log_tally_track();
DROP TRIGGER IF EXISTS contact_log_tally_update ON contactlog.contact_log;
CREATE TRIGGER contact_log_tally_update
    AFTER UPDATE ON contactlog.contact_log REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION contactlog.contact_log_tally_track();
DROP TRIGGER IF EXISTS contact_log_tally_delete ON contactlog.contact_log;
CREATE TRIGGER contact_log_tally_delete
    AFTER DELETE ON contactlog.contact_log REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION contactlog.contact_log_tally_track();
DROP TRIGGER IF EXISTS contact_log_tally_truncate ON contactlog.contact_log;
CREATE TRIGGER contact_log_tally_truncate
    AFTER TRUNCATE ON contactlog.contact_log
    FOR EACH STATEMENT EXECUTE FUNCTION contactlog.contact_log_tally_clear();

-- Rebuilds the counts from the logs (after loading with triggers disabled, e.g.
-- session_replication_role = replica). Waits for writers and blocks them while
-- it counts. Returns the number of logs.
CREATE OR REPLACE FUNCTION contactlog.recount_logs() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'contactlog.recount_logs() must run in a READ COMMITTED transaction'
            USING ERRCODE = '25001';
    END IF;
    LOCK TABLE contactlog.contact_log IN SHARE MODE;
    DELETE FROM contactlog.contact_log_tally;
    INSERT INTO contactlog.contact_log_tally (status, owner_id, follow_up, is_base, n)
    SELECT l.status, l.owner_id, l.next_contact_at IS NOT NULL, true, count(*)
    FROM contactlog.contact_log l
    GROUP BY 1, 2, 3;
    SELECT coalesce(sum(t.n), 0) INTO total FROM contactlog.contact_log_tally t;
    RETURN total;
END
$$;

-- ---- The read side ----

-- Follow-ups still to do: logs open or in progress with a next contact. Ordered
-- by next_contact_at (ORDER BY ... LIMIT) it reads contact_log_open_follow_up_idx;
-- filtered by owner_id or created_by, their indexes.
CREATE OR REPLACE VIEW contactlog.open_follow_ups AS
SELECT l.id              AS log_id,
       l.contact_name,
       l.next_contact_at,
       l.reason,
       l.priority,
       l.status,
       l.owner_id,
       o.display_name    AS owner_name,
       l.created_by,
       c.display_name    AS created_by_name,
       l.assigned_to,
       a.display_name    AS assigned_to_name
FROM contactlog.contact_log l
JOIN contactlog.employee c ON c.id = l.created_by
LEFT JOIN contactlog.employee o ON o.id = l.owner_id
LEFT JOIN contactlog.employee a ON a.id = l.assigned_to
WHERE l.status IN ('open', 'in_progress') AND l.next_contact_at IS NOT NULL;

-- The counters of a front end's start page, from the tally (not a count over
-- every log). badge = open logs + open follow-ups (an open log with a follow-up
-- counts in both).
CREATE OR REPLACE VIEW contactlog.summary AS
SELECT s.open, s.in_progress, s.completed, s.open_follow_ups,
       s.open + s.open_follow_ups AS badge
FROM (SELECT coalesce(sum(t.n) FILTER (WHERE t.status = 'open'), 0)::bigint        AS open,
             coalesce(sum(t.n) FILTER (WHERE t.status = 'in_progress'), 0)::bigint AS in_progress,
             coalesce(sum(t.n) FILTER (WHERE t.status = 'completed'), 0)::bigint   AS completed,
             coalesce(sum(t.n) FILTER (WHERE t.status IN ('open', 'in_progress')
                                         AND t.follow_up), 0)::bigint              AS open_follow_ups
      FROM contactlog.contact_log_tally t) s;

-- text with LIKE's wildcards and escape character escaped (escape character \).
CREATE OR REPLACE FUNCTION contactlog.like_escape(pattern text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT replace(replace(replace(pattern, E'\\', E'\\\\'), '%', E'\\%'), '_', E'\\_');
$$;

-- The rows of one part of a contactlog.list_logs page, as "FROM ..." text: ids
-- aliased l.id, with the sort key as l.k when there is one. All pieces are fixed
-- SQL; values only come in as parameters: $1 the owners searched for, $2 + $3
-- the rows needed (page size + offset), $5 the part's statuses. Each range reads
-- only its index where it can (index-only scans).
--
--  * no owner search: one index range per status ($5[1], $5[2], ...), each
--    already in page order and cut at $2 + $3 rows, merged (Merge Append);
--  * owner search: the same per matching owner (owner_idx, owner_created_at_idx),
--    or, for a key no owner index is ordered by, that owner's logs sorted
--    (fenced with OFFSET 0, so no plan walks a whole key index looking for
--    them). Owned logs are in progress (the table's constraint), so the caller
--    only asks when 'in_progress' is among the statuses and no status test is
--    needed here.
CREATE OR REPLACE FUNCTION contactlog.list_logs_source(by_owner boolean, statuses integer,
                                                       part_sql text, key_sql text, dir text,
                                                       owner_ordered boolean)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN by_owner THEN
               'unnest($1) AS w(owner_id) CROSS JOIN LATERAL (SELECT * FROM (SELECT l.id, l.owner_id'
            || coalesce(', ' || key_sql || ' AS k', '')
            || ' FROM contactlog.contact_log l WHERE l.owner_id = w.owner_id' || part_sql
            || CASE WHEN owner_ordered THEN '' ELSE ' OFFSET 0' END
            || ') l ORDER BY ' || CASE WHEN key_sql IS NULL THEN '' ELSE 'l.k ' || dir || ', ' END
            || 'l.id ' || dir || ' LIMIT $2 + $3) l'
           ELSE
               '(' || (SELECT string_agg(
                          '(SELECT l.id' || coalesce(', ' || key_sql || ' AS k', '')
                       || ' FROM contactlog.contact_log l WHERE l.status = $5[' || i || ']'
                       || part_sql || ' ORDER BY ' || CASE WHEN key_sql IS NULL THEN ''
                                                           ELSE 'k ' || dir || ', ' END
                       || 'l.id ' || dir || ' LIMIT $2 + $3)',
                          ' UNION ALL ' ORDER BY i)
                       FROM generate_series(1, statuses) i)
            || ') l'
           END;
$$;

-- The page query of contactlog.list_logs: choose the page's ids from the source
-- (index ranges), then look up the logs and names for those rows only.
CREATE OR REPLACE FUNCTION contactlog.list_logs_sql(source_sql text, pick_order text,
                                                    row_order text)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'SELECT l.id, l.created_at, l.updated_at, l.created_by, c.display_name,'
        || ' l.contact_name, l.status, l.owner_id, o.display_name, l.priority,'
        || ' l.assigned_to, a.display_name, l.forward_to, f.display_name,'
        || ' l.reason, l.next_contact_at, $4::bigint'
        || ' FROM (SELECT l.id FROM ' || source_sql
        || ' ORDER BY ' || pick_order || ' LIMIT $2 OFFSET $3) pick'
        || ' JOIN contactlog.contact_log l ON l.id = pick.id'
        || ' JOIN contactlog.employee c ON c.id = l.created_by'
        || ' LEFT JOIN contactlog.employee o ON o.id = l.owner_id'
        || ' LEFT JOIN contactlog.employee a ON a.id = l.assigned_to'
        || ' LEFT JOIN contactlog.employee f ON f.id = l.forward_to'
        || ' ORDER BY ' || row_order;
$$;

-- One page of logs and, on every row, how many match the filters.
--
--   status        NULL (all) or 'open', 'in_progress', 'completed'
--   owner_search  a piece of the owner's name, any case, taken literally (% and _
--                 too); NULL or '' for no filter. Only logs in progress have an owner.
--   sort          created_at, next_contact_at, contact_name, owner, status
--                 (open, in progress, completed), priority (low, normal, high);
--                 ties broken by id in the same direction. Logs without a value
--                 (no follow-up, no owner) come last in either direction.
--   descending, page (from 1), page_size (1 to 1000)
--
-- The sort and the filters choose among fixed pieces of SQL written here; the
-- caller's text only ever travels as a parameter, never into the SQL.
--
-- The listing is cut into parts read one after the other: logs with a value
-- for the sort key, then those without (next_contact_at, owner), or one part
-- per status (sort by status). The tally gives the total and every part's size,
-- so whole parts before the page are skipped without reading them. Within a
-- part, a page is read from index ranges in page order (see list_logs_source),
-- page_size + offset entries at most, however the data is spread. STABLE: every
-- query here sees the same snapshot, so rows and totals agree.
CREATE OR REPLACE FUNCTION contactlog.list_logs(status text DEFAULT NULL,
                                                owner_search text DEFAULT NULL,
                                                sort text DEFAULT 'created_at',
                                                descending boolean DEFAULT true,
                                                page integer DEFAULT 1,
                                                page_size integer DEFAULT 10)
RETURNS SETOF contactlog.log_list_row
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, contactlog, pg_temp
SET jit = off   -- compiling a page query costs more than running it (up to 100+ ms)
AS $fn$
#variable_conflict use_column
DECLARE
    all_statuses  constant text[] := ARRAY['open', 'in_progress', 'completed'];  -- sort order
    want_status   constant text := list_logs.status;
    dir           text;
    key_sql       text;              -- the sort key over l, NULL: by id alone
    owner_ordered boolean := false;  -- an owner index is in key order
    owners        bigint[];          -- NULL: no owner search
    statuses      text[];            -- the statuses asked for
    -- The parts, read in order: which logs (all, follow_up, no_follow_up, owned,
    -- unowned) of which statuses.
    part_kind     text[];
    part_status   text[];            -- comma-separated statuses of each part
    total         bigint;
    part_size     bigint;
    part_statuses text[];
    part_sql      text;
    pick_order    text;
    row_order     text;
    skip          bigint;
    got           bigint := 0;
    n             bigint;
BEGIN
    IF want_status IS NOT NULL AND NOT want_status = ANY (all_statuses) THEN
        RAISE EXCEPTION 'unknown status %: use open, in_progress, completed or NULL',
                        quote_literal(want_status)
            USING ERRCODE = '22023';
    END IF;
    IF descending IS NULL THEN
        RAISE EXCEPTION 'descending must be true or false' USING ERRCODE = '22023';
    END IF;
    IF page IS NULL OR page < 1 THEN
        RAISE EXCEPTION 'page must be 1 or more, not %', coalesce(page::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF page_size IS NULL OR page_size NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'page_size must be between 1 and 1000, not %',
                        coalesce(page_size::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;

    dir := CASE WHEN descending THEN 'DESC' ELSE 'ASC' END;
    statuses := CASE WHEN want_status IS NULL THEN all_statuses ELSE ARRAY[want_status] END;
    CASE sort
        WHEN 'created_at' THEN
            key_sql := 'l.created_at';
            owner_ordered := true;
            part_kind := ARRAY['all'];
        WHEN 'next_contact_at' THEN
            key_sql := 'l.next_contact_at';
            part_kind := ARRAY['follow_up', 'no_follow_up'];
        WHEN 'contact_name' THEN
            key_sql := 'l.contact_name';
            part_kind := ARRAY['all'];
        WHEN 'owner' THEN
            owner_ordered := true;       -- by id within one owner
            part_kind := ARRAY['owned', 'unowned'];
        WHEN 'status' THEN
            owner_ordered := true;
            part_kind := ARRAY['all', 'all', 'all'];
        WHEN 'priority' THEN
            key_sql := 'contactlog.priority_rank(l.priority)';
            part_kind := ARRAY['all'];
        ELSE
            RAISE EXCEPTION 'unknown sort %: use created_at, next_contact_at, contact_name, '
                            'owner, status or priority', coalesce(quote_literal(sort), 'NULL')
                USING ERRCODE = '22023';
    END CASE;
    IF sort = 'status' THEN
        -- One part per status, in status order.
        part_status := ARRAY(SELECT s FROM unnest(all_statuses) WITH ORDINALITY AS a(s, i)
                             ORDER BY CASE WHEN descending THEN -i ELSE i END);
    ELSIF sort = 'owner' THEN
        part_status := ARRAY['in_progress', 'open,completed'];
    ELSE
        part_status := array_fill('open,in_progress,completed'::text, ARRAY[cardinality(part_kind)]);
    END IF;

    IF owner_search <> '' THEN
        SELECT coalesce(array_agg(e.id), '{}') INTO owners
        FROM contactlog.employee e
        WHERE e.display_name ILIKE '%' || contactlog.like_escape(owner_search) || '%' ESCAPE E'\\';
    END IF;

    SELECT coalesce(sum(t.n), 0)::bigint INTO total
    FROM contactlog.contact_log_tally t
    WHERE t.status = ANY (statuses) AND (owners IS NULL OR t.owner_id = ANY (owners));

    skip := (page - 1)::bigint * page_size;
    FOR part IN 1 .. cardinality(part_kind) LOOP
        EXIT WHEN got >= page_size;
        part_statuses := ARRAY(SELECT s FROM unnest(string_to_array(part_status[part], ',')) s
                               WHERE s = ANY (statuses));
        SELECT coalesce(sum(t.n), 0)::bigint INTO part_size
        FROM contactlog.contact_log_tally t
        WHERE t.status = ANY (part_statuses)
          AND (owners IS NULL OR t.owner_id = ANY (owners))
          AND CASE part_kind[part]
                  WHEN 'follow_up'    THEN t.follow_up
                  WHEN 'no_follow_up' THEN NOT t.follow_up
                  WHEN 'owned'        THEN t.owner_id IS NOT NULL
                  WHEN 'unowned'      THEN t.owner_id IS NULL
                  ELSE true
              END;
        IF skip >= part_size THEN
            skip := skip - part_size;
            CONTINUE;
        END IF;

        part_sql := CASE part_kind[part]
                        WHEN 'follow_up'    THEN ' AND l.next_contact_at IS NOT NULL'
                        WHEN 'no_follow_up' THEN ' AND l.next_contact_at IS NULL'
                        ELSE ''   -- owned: in progress; unowned: open or completed
                    END;
        IF part_kind[part] = 'owned' THEN
            -- By owner name: employees in name order, each one's logs by id.
            pick_order := format('o.display_name %1$s, o.id %1$s, l.id %1$s', dir);
            row_order := pick_order;
            RETURN QUERY EXECUTE contactlog.list_logs_sql(
                    CASE WHEN owners IS NULL THEN
                        'contactlog.contact_log l JOIN contactlog.employee o ON o.id = l.owner_id'
                    ELSE
                        contactlog.list_logs_source(true, cardinality(part_statuses), '', NULL,
                                                    dir, true)
                        || ' JOIN contactlog.employee o ON o.id = l.owner_id'
                    END,
                    pick_order, row_order)
                USING owners, page_size - got, skip, total, part_statuses;
        ELSE
            pick_order := CASE WHEN key_sql IS NULL THEN format('l.id %s', dir)
                               ELSE format('l.k %1$s, l.id %1$s', dir) END;
            row_order := CASE WHEN key_sql IS NULL THEN format('l.id %s', dir)
                              ELSE format('%2$s %1$s, l.id %1$s', dir, key_sql) END;
            RETURN QUERY EXECUTE contactlog.list_logs_sql(
                    contactlog.list_logs_source(owners IS NOT NULL, cardinality(part_statuses),
                                                part_sql, key_sql, dir, owner_ordered),
                    pick_order, row_order)
                USING owners, page_size - got, skip, total, part_statuses;
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
        skip := 0;
    END LOOP;
END
$fn$;
