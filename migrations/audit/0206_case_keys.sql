-- Case data keys (README, Party data): each case's AES-256 key, wrapped by the audit service's
-- master key (`audit.keys.master_key`, from the environment), made for the agency that opened
-- the case. Erasing a case (crypto-shredding) clears `wrapped` for good: every sealed copy of
-- its parties' data, wherever it is, can no longer be opened. This is the one table of the audit
-- store whose rows change, and only that way (a trigger refuses anything else).
CREATE TABLE audit_case_keys (
    case_id    UUID        PRIMARY KEY,
    wrapped    BYTEA,
    issued_to  TEXT        NOT NULL,
    -- the body the case was sent to: it may open the key until the log records the case
    first_holder TEXT      NOT NULL,
    issued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    erased_at  TIMESTAMPTZ,
    erased_by  TEXT,
    erase_reason TEXT,
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL))
);

CREATE FUNCTION audit_case_keys_only_erase() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.erased_at IS NOT NULL OR NEW.wrapped IS NOT NULL
       OR NEW.case_id <> OLD.case_id OR NEW.issued_to <> OLD.issued_to OR NEW.first_holder <> OLD.first_holder
       OR NEW.issued_at <> OLD.issued_at THEN
        RAISE EXCEPTION 'a case key can only be erased, once' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_case_keys_erase_only BEFORE UPDATE OR DELETE ON audit_case_keys
    FOR EACH ROW EXECUTE FUNCTION audit_case_keys_only_erase();

-- Every release of a case key — issued, opened (a read of the parties' data), erased — with who
-- and why. Append-only like the log.
CREATE TABLE audit_key_releases (
    id        BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    case_id   UUID        NOT NULL,
    agency    TEXT        NOT NULL,
    action    TEXT        NOT NULL CHECK (action IN ('issued', 'opened', 'erased')),
    purpose   TEXT        NOT NULL DEFAULT '',
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_key_releases_case ON audit_key_releases (case_id, id);
CREATE TRIGGER audit_key_releases_append_only BEFORE UPDATE OR DELETE ON audit_key_releases
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_key_releases_no_truncate BEFORE TRUNCATE ON audit_key_releases
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'duijie_audit_writer') THEN
        GRANT SELECT, INSERT ON audit_key_releases TO duijie_audit_writer;
        GRANT SELECT, INSERT, UPDATE ON audit_case_keys TO duijie_audit_writer;
    END IF;
END $$;
