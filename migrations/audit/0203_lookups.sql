-- Parties' lookups by case code (当事人查询, `AuditService.LookupCase`): every attempt, answered
-- or refused, is recorded here, append-only. The rate limits are counted from this table, so
-- every replica of the audit service sees the same attempts. The second factor itself (the end
-- of an identity number, an access code) is never stored.
CREATE TABLE audit_lookups (
    id             BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The party's address as the console saw it (IP).
    client_address TEXT        NOT NULL,
    -- The case code as asked (trimmed, upper case; at most 64 characters kept).
    case_code      TEXT        NOT NULL,
    -- The case the code and factor matched; NULL unless found.
    case_id        UUID,
    -- found: answered; not_found: no case matches the code and factor (wrong code, wrong factor
    -- or unknown case, which the party cannot tell apart); limited: refused by a rate limit.
    outcome        TEXT        NOT NULL CHECK (outcome IN ('found', 'not_found', 'limited')),
    -- Which factor matched: id_suffix or access_code; NULL unless found.
    factor_kind    TEXT        CHECK (factor_kind IN ('id_suffix', 'access_code')),
    -- The certificate common name of the caller (the console).
    via            TEXT        NOT NULL
);
-- What the limits count: an address's attempts, a code's failed attempts, in a recent window.
CREATE INDEX audit_lookups_address ON audit_lookups (client_address, at);
CREATE INDEX audit_lookups_code ON audit_lookups (case_code, at) WHERE outcome = 'not_found';

CREATE TRIGGER audit_lookups_append_only BEFORE UPDATE OR DELETE ON audit_lookups
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_lookups_no_truncate BEFORE TRUNCATE ON audit_lookups
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_lookups FROM PUBLIC;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'duijie_audit_writer') THEN
        GRANT SELECT, INSERT ON audit_lookups TO duijie_audit_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege OR undefined_object THEN
    RAISE NOTICE 'role duijie_audit_writer not granted audit_lookups: %', SQLERRM;
END $$;

-- A party may type the code in any case: the lookup compares upper(case_code).
CREATE INDEX audit_cases_code_upper ON audit_cases (upper(case_code));
