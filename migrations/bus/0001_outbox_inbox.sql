-- The reliable-handoff tables every agency service database carries.
-- Outbox: envelopes staged in the same transaction as the state change that produced them;
-- the relay publishes them with publisher confirms and marks them sent only after the broker's ack.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    -- Envelope.message_id; unique so that re-staging the same envelope (a retried request) is a no-op.
    message_id      UUID        NOT NULL UNIQUE,
    case_id         UUID        NOT NULL,
    -- MessageKind routing segment, e.g. 'referral'; kept for operators reading the table.
    kind            TEXT        NOT NULL,
    exchange        TEXT        NOT NULL,
    routing_key     TEXT        NOT NULL,
    -- protobuf-encoded duijie.v1.Envelope
    payload         BYTEA       NOT NULL,
    -- W3C trace context captured when the row was staged: traceparent / tracestate
    traceparent     TEXT,
    tracestate      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- set only after the broker confirmed (ack, not returned) the publish
    sent_at         TIMESTAMPTZ,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT
);

-- The relay only ever scans unsent rows; keep that scan independent of how many rows were sent.
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Inbox: (consumer, message_id) recorded in the same transaction as the message's effects,
-- so a redelivered message is recognised and skipped.
CREATE TABLE inbox (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    routing_key  TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

