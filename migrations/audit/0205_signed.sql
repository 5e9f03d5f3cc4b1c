-- Signed handoffs (README, Signed handoffs). Each record keeps the signature its envelope came
-- with and the signer's certificate, so `Verify` and anyone holding the log can check who said
-- what; `signer` is the certificate's common name as the store's verifier accepted it.
-- `refused` says why the message took no effect (NULL: it did): a signature the store refused
-- (forged, unsigned, wrong signer) or a step the case's lifecycle or the rights matrix refuses.
-- Both are covered by the record's hash (store::record_hash), so they cannot be edited unseen.
ALTER TABLE audit_log
    ADD COLUMN signature   BYTEA,
    ADD COLUMN signer_cert BYTEA,
    ADD COLUMN signer      TEXT,
    ADD COLUMN refused     TEXT;

-- A case the log knows only from refused messages (e.g. a forged referral for a case nobody
-- referred): its records stay in the chain, but it is not a case the statistics, lists or
-- lookups count until a message of it takes effect.
ALTER TABLE audit_cases
    ADD COLUMN refused_only BOOLEAN NOT NULL DEFAULT false;

-- Anchors: a tree head signed by the audit service (its certificate travels with it) is what
-- witnesses keep; `Verify` checks the log against one (AuditService.GetAnchor).
ALTER TABLE audit_tree_heads
    ADD COLUMN signature   BYTEA,
    ADD COLUMN signer_cert BYTEA;

-- The statistics count refused messages by recording time; they are few, so a partial index.
CREATE INDEX audit_log_refused ON audit_log (recorded_at) WHERE refused IS NOT NULL;
