-- A case handed on by another mediation body (redirect, escalation) arrives with its history:
-- those messages are kept in the new holder's timeline as 'prior' (it neither sent nor
-- received them), so its view and its legal clocks cover the whole case.
ALTER TABLE case_events DROP CONSTRAINT case_events_direction_check;
ALTER TABLE case_events ADD CONSTRAINT case_events_direction_check CHECK (direction IN ('out', 'in', 'prior'));

-- Lists of an agency's cases, most recently changed first.
CREATE INDEX cases_recent ON cases (owner_kind, owner_code, updated_at DESC, case_id DESC);
