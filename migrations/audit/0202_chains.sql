-- The log as several hash chains (one per partition of cases) so that more than one writer can
-- append: every case lives on one chain, chosen when its first record is appended (a hash of
-- its case id onto the configured number of chains), and each chain has its own head row and
-- its own gap-free sequence. The log before this migration becomes chain 0, unchanged: its
-- records keep their sequence numbers and hashes, audit_head becomes chain 0's head, every
-- existing case stays on chain 0, and retention's checkpoints become chain 0's.

-- The end of each chain. Its row lock serialises the appends to that chain only.
CREATE TABLE audit_chains (
    chain            INTEGER     PRIMARY KEY CHECK (chain >= 0),
    last_seq         BIGINT      NOT NULL,
    -- hash of the chain's last record; before its first record, the chain's genesis value
    -- (empty for chain 0, as the log always began)
    last_hash        BYTEA       NOT NULL,
    -- recording times never go back along a chain (retention drops months as whole prefixes)
    last_recorded_at TIMESTAMPTZ
);
INSERT INTO audit_chains (chain, last_seq, last_hash, last_recorded_at)
    SELECT 0, last_seq, last_hash, (SELECT max(recorded_at) FROM audit_log) FROM audit_head WHERE id = 1;
DROP TABLE audit_head;

-- A record is (chain, seq): the sequence runs per chain. Existing records are chain 0's.
ALTER TABLE audit_log ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_log ALTER COLUMN chain DROP DEFAULT;
ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey;
ALTER TABLE audit_log ADD PRIMARY KEY (chain, seq, recorded_at);

ALTER TABLE audit_messages ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_messages ALTER COLUMN chain DROP DEFAULT;

ALTER TABLE audit_cases ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_cases ALTER COLUMN chain DROP DEFAULT;

-- One checkpoint per chain and dropped partition.
ALTER TABLE audit_checkpoints ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_checkpoints ALTER COLUMN chain DROP DEFAULT;
ALTER TABLE audit_checkpoints DROP CONSTRAINT audit_checkpoints_pkey;
ALTER TABLE audit_checkpoints ADD PRIMARY KEY (chain, seq);

-- Tree heads: from time to time the service commits to every chain's head at one moment with
-- one hash (a Merkle tree over the chains' heads, as Certificate Transparency's signed tree
-- head commits to its log). `Verify` checks that the log still holds what every tree head
-- covered, so a log cut back or rewritten together with its chain heads is found as long as
-- a tree head (or a copy of one handed out) survives. Append-only like the log.
CREATE TABLE audit_tree_heads (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- every chain's head at that moment (parallel arrays, ordered by chain)
    chains      INTEGER[]   NOT NULL,
    sizes       BIGINT[]    NOT NULL,
    hashes      BYTEA[]     NOT NULL,
    root        BYTEA       NOT NULL
);
CREATE TRIGGER audit_tree_heads_append_only BEFORE UPDATE OR DELETE ON audit_tree_heads
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_tree_heads_no_truncate BEFORE TRUNCATE ON audit_tree_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_tree_heads FROM PUBLIC;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'duijie_audit_writer') THEN
        GRANT SELECT, INSERT ON audit_tree_heads TO duijie_audit_writer;
        GRANT SELECT, UPDATE, INSERT ON audit_chains TO duijie_audit_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'grants for duijie_audit_writer not set: %', SQLERRM;
END $$;
