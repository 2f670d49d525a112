-- Workshop SLA: every open work order gets a due date, 14 days after it was opened
-- (3 days for priority 1). Adding a nullable column is a catalog-only change; the
-- backfill touches only open orders, a small part of the table.
ALTER TABLE work_orders ADD COLUMN due_on date;

UPDATE work_orders
SET due_on = (opened_at + CASE WHEN priority = 1 THEN interval '3 days' ELSE interval '14 days' END)::date
WHERE status IN ('open', 'in_progress', 'waiting_parts');

COMMENT ON COLUMN work_orders.due_on IS 'SLA due date of an open work order';
