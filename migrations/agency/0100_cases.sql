-- Cases as one agency node sees them (the service's database may serve several nodes of its
-- kind, e.g. the district centre and its town and village committees).
CREATE TABLE cases (
    owner_kind        TEXT        NOT NULL,
    owner_code        TEXT        NOT NULL,
    case_id           UUID        NOT NULL,
    case_code         TEXT        NOT NULL,
    channel           INTEGER     NOT NULL,
    referrer_kind     TEXT        NOT NULL,
    referrer_code     TEXT        NOT NULL,
    holder_kind       TEXT        NOT NULL,
    holder_code       TEXT        NOT NULL,
    state             TEXT        NOT NULL,
    before_cancel     TEXT,
    clock_policy      INTEGER     NOT NULL,
    -- the referrer's request id: a retried submit returns the same case
    client_request_id TEXT,
    -- protobuf-encoded duijie.v1.Referral (party identity numbers inside: never returned unmasked
    -- to an agency that does not need them)
    referral          BYTEA       NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_kind, owner_code, case_id)
);
CREATE UNIQUE INDEX cases_request ON cases (owner_kind, owner_code, client_request_id) WHERE client_request_id IS NOT NULL;

-- Every message of a case this node sent or received, in order: the timeline as this agency sees it.
CREATE TABLE case_events (
    seq          BIGSERIAL   PRIMARY KEY,
    owner_kind   TEXT        NOT NULL,
    owner_code   TEXT        NOT NULL,
    case_id      UUID        NOT NULL,
    message_id   UUID        NOT NULL,
    direction    TEXT        NOT NULL CHECK (direction IN ('out', 'in')),
    kind         TEXT        NOT NULL,
    sender       TEXT        NOT NULL,
    recipient    TEXT        NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    state_after  TEXT        NOT NULL,
    -- protobuf-encoded duijie.v1.Envelope
    envelope     BYTEA       NOT NULL,
    UNIQUE (owner_kind, owner_code, message_id)
);
CREATE INDEX case_events_case ON case_events (owner_kind, owner_code, case_id, seq);
