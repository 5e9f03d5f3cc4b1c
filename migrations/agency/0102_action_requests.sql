-- Idempotency keys of case actions (gRPC metadata `idempotency-key`): a retried call with the
-- same key answers with the case as it is, without sending the message twice.
CREATE TABLE action_requests (
    owner_kind  TEXT        NOT NULL,
    owner_code  TEXT        NOT NULL,
    request_id  TEXT        NOT NULL,
    case_id     UUID        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_kind, owner_code, request_id)
);
