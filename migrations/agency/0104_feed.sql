-- The live feed of an agency's case changes (CasesService.Watch) reads timeline rows in the
-- order they became visible. `seq` alone does not give that order: a row takes its number when
-- inserted, its transaction may commit after one that took a later number, and a reader that
-- had passed the later number would never see it. So each row keeps the id of the transaction
-- that wrote it, and the feed hands out only rows whose transaction is older than every
-- transaction still running (pg_snapshot_xmin), in (tx, seq) order: a row it has not handed out
-- yet can then only come after its cursor. Rows written before this migration all take the
-- migration's transaction id, so their order stays their seq order.
ALTER TABLE case_events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX case_events_feed ON case_events (owner_kind, owner_code, tx, seq);
