-- The reliable-handoff tables every agency service database carries.
-- Outbox: envelopes staged in the same transaction as the state change that produced them;
-- the relay publishes them with publisher confirms and deletes a row only after the broker's ack
-- (every row here is unsent; what was sent is in the audit store). Deleting rather than marking
-- sent writes a few bytes of WAL instead of a new 2 KB row version.
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
    -- failed publishes so far (returned as unroutable, or nacked)
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT
);

-- Envelopes are a few KB: keep them inline and uncompressed (the default would compress/TOAST
-- rows over ~2 KB, spending CPU on every insert and claim).
ALTER TABLE outbox SET (toast_tuple_target = 8160);

-- Inbox: (consumer, message_id) recorded in the same transaction as the message's effects,
-- so a redelivered message is recognised and skipped.
CREATE TABLE inbox (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    routing_key  TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

