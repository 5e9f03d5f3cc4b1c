-- Issue #15: replicas on partitioned queues.
--
-- The relay publishes a case's rows in order: a row waits while an earlier row of its case waits
-- for a retry (returned or refused by the broker), so a retry never lets a later message of the
-- case overtake it. This index answers "an earlier unsent row of this case?" per claimed row.
CREATE INDEX outbox_case ON outbox (case_id, id);

-- Messages that arrived before the case's state allowed them (a crossing message, a message
-- overtaken by a retry, an agency this service's directory does not list yet): held here, out of
-- the queue, and tried again after every batch that touches their case and every few seconds,
-- until they apply or `hold_for` has passed; then they go to the dead letters with the last
-- reason. Not in `inbox`: a held message has not been applied.
CREATE TABLE inbox_held (
    consumer      TEXT        NOT NULL,
    message_id    UUID        NOT NULL,
    -- the partition queue it came from (its active consumer retries it)
    queue         TEXT        NOT NULL,
    case_id       UUID        NOT NULL,
    routing_key   TEXT        NOT NULL,
    -- the envelope's bytes as delivered, and what the consumer's verifier said of them
    body          BYTEA       NOT NULL,
    signature     BYTEA,
    signer_cert   BYTEA,
    signer        TEXT,
    traceparent   TEXT,
    tracestate    TEXT,
    held_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts      INTEGER     NOT NULL DEFAULT 1,
    next_try_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason        TEXT        NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_held_queue ON inbox_held (queue, next_try_at);
CREATE INDEX inbox_held_case ON inbox_held (consumer, case_id, held_at);
