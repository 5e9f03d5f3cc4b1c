-- The audit store: an append-only, hash-chained log of every envelope that reached an agency
-- (a copy from the bus's tap), and projections rebuilt from it in the same transaction.

-- The log, partitioned by month of recording (retention drops whole partitions; see
-- audit_checkpoints). `seq` is gap-free: appends are serialised on audit_head.
CREATE TABLE audit_log (
    seq            BIGINT      NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    case_id        UUID        NOT NULL,
    case_seq       INTEGER     NOT NULL,
    message_id     UUID        NOT NULL,
    kind           TEXT        NOT NULL,
    channel        INTEGER     NOT NULL,
    sender         TEXT        NOT NULL,
    recipient      TEXT        NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    causation_id   UUID,
    trace_id       TEXT        NOT NULL,
    state_after    TEXT        NOT NULL,
    -- protobuf-encoded duijie.v1.Envelope, exactly as received
    envelope       BYTEA       NOT NULL,
    -- hash of the previous record of the same case (empty for the first)
    case_prev_hash BYTEA       NOT NULL,
    -- SHA-256 over this record's content, the previous record's hash (global) and case_prev_hash
    hash           BYTEA       NOT NULL,
    PRIMARY KEY (seq, recorded_at)
) PARTITION BY RANGE (recorded_at);
CREATE INDEX audit_log_case ON audit_log (case_id, seq);
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

-- A redelivered envelope is stored once (the key the partitioned log cannot have).
CREATE TABLE audit_messages (
    message_id UUID   PRIMARY KEY,
    seq        BIGINT NOT NULL
);

-- The end of the global chain; its row lock serialises appends so concurrent writers cannot fork it.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  BIGINT  NOT NULL,
    last_hash BYTEA   NOT NULL
);
INSERT INTO audit_head VALUES (1, 0, ''::bytea);

-- Where the chain continues after old partitions were dropped for retention.
CREATE TABLE audit_checkpoints (
    seq          BIGINT      PRIMARY KEY,
    hash         BYTEA       NOT NULL,
    dropped      TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Append-only: the database itself refuses changes to the log.
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_messages_append_only BEFORE UPDATE OR DELETE ON audit_messages
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, audit_messages FROM PUBLIC;
-- The role a deployment gives the audit service at run time (the owner runs migrations and
-- retention): it may append and read, nothing else. Skipped where the migrating user may not
-- create roles (the triggers above and the hash chain still hold).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'duijie_audit_writer') THEN
        CREATE ROLE duijie_audit_writer NOLOGIN;
    END IF;
    GRANT SELECT, INSERT ON audit_log, audit_messages TO duijie_audit_writer;
EXCEPTION WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
    RAISE NOTICE 'role duijie_audit_writer not set up: %', SQLERRM;
END $$;

-- Monthly partitions from this month to `months_ahead` months on (idempotent).
CREATE FUNCTION audit_ensure_partitions(months_ahead INTEGER) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m DATE := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
BEGIN
    FOR i IN 0..months_ahead LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
            'audit_log_' || to_char(m + make_interval(months => i), 'YYYY_MM'),
            (m + make_interval(months => i))::timestamp AT TIME ZONE 'UTC',
            (m + make_interval(months => i + 1))::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END $$;
SELECT audit_ensure_partitions(2);

-- Projection: where every case stands (rebuilt from the log by replaying it).
CREATE TABLE audit_cases (
    case_id            UUID        PRIMARY KEY,
    case_code          TEXT        NOT NULL,
    channel            INTEGER     NOT NULL,
    referrer_kind      TEXT        NOT NULL,
    referrer_code      TEXT        NOT NULL,
    holder_kind        TEXT        NOT NULL,
    holder_code        TEXT        NOT NULL,
    state              TEXT        NOT NULL,
    before_cancel      TEXT,
    state_since        TIMESTAMPTZ NOT NULL,
    clock_policy       INTEGER     NOT NULL,
    received_at        TIMESTAMPTZ NOT NULL,
    signed_at          TIMESTAMPTZ,
    accepted_at        TIMESTAMPTZ,
    rejected_at        TIMESTAMPTZ,
    outcome            TEXT,
    outcome_at         TIMESTAMPTZ,
    confirmation_requested_at TIMESTAMPTZ,
    confirmation_granted_at   TIMESTAMPTZ,
    closed_at          TIMESTAMPTZ,
    last_case_seq      INTEGER     NOT NULL,
    last_hash          BYTEA       NOT NULL
);
CREATE INDEX audit_cases_code ON audit_cases (case_code);
CREATE INDEX audit_cases_received ON audit_cases (received_at);
CREATE INDEX audit_cases_open ON audit_cases (state, state_since) WHERE closed_at IS NULL;
CREATE INDEX audit_cases_referrer ON audit_cases (referrer_code text_pattern_ops);
CREATE INDEX audit_cases_holder ON audit_cases (holder_code text_pattern_ops);

-- Every agency that sent or received a message of a case: who may read it.
CREATE TABLE audit_participants (
    case_id UUID NOT NULL,
    kind    TEXT NOT NULL,
    code    TEXT NOT NULL,
    PRIMARY KEY (kind, code, case_id)
);

-- The legal time limits of every case, and which notices went out.
CREATE TABLE audit_deadlines (
    case_id     UUID        NOT NULL,
    time_limit  INTEGER     NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    due_at      TIMESTAMPTZ NOT NULL,
    met_at      TIMESTAMPTZ,
    warned_at   TIMESTAMPTZ,
    breached_at TIMESTAMPTZ,
    PRIMARY KEY (case_id, time_limit)
);
CREATE INDEX audit_deadlines_running ON audit_deadlines (due_at) WHERE met_at IS NULL;
