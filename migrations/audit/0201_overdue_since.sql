-- When the case's first limit fell due without being met in time (NULL: none so far). Kept with
-- the deadlines, so the statistics count overdue cases without joining every deadline.
ALTER TABLE audit_cases ADD COLUMN overdue_since TIMESTAMPTZ;
UPDATE audit_cases c SET overdue_since = (
    SELECT min(d.due_at) FROM audit_deadlines d WHERE d.case_id = c.case_id AND (d.met_at IS NULL OR d.met_at > d.due_at));
-- Days to closure for the statistics: an index-only scan of the cases closed in a period.
CREATE INDEX audit_cases_closure ON audit_cases (closed_at)
    INCLUDE (received_at, channel, referrer_kind, referrer_code, holder_kind, holder_code) WHERE state = 'CLOSED';
