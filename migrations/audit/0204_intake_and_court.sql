-- Cases a mediation body took in itself (自行受理, CHANNEL_SELF_INTAKE): how each came in and its
-- risk level, from the registering referral's `intake` (0 on a referred case), for the
-- statistics by source.
ALTER TABLE audit_cases
    ADD COLUMN intake_source INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN risk_level    INTEGER NOT NULL DEFAULT 0;

-- The court a judicial confirmation application was made to when it is not the case's referrer
-- (ConfirmationRequest.court, 司法确认 at any court): the open handoff waits for it.
ALTER TABLE audit_cases
    ADD COLUMN court_kind TEXT,
    ADD COLUMN court_code TEXT;
