-- runbook: no-transaction
-- CREATE INDEX CONCURRENTLY cannot run in a transaction. It does not block writes to
-- work_orders while it builds. IF NOT EXISTS makes a re-run after a crash harmless; a
-- build that fails leaves an INVALID index, to be dropped with DROP INDEX CONCURRENTLY.
CREATE INDEX CONCURRENTLY IF NOT EXISTS work_orders_open_due_on_idx
    ON work_orders (due_on)
    WHERE status IN ('open', 'in_progress', 'waiting_parts');
