-- Two-phase commit across shards (stage 7; src/db/two_phase.rs). Created on every database, used
-- only where a write spans shards: until stage 7 the table stays empty.
--
-- One row per global transaction, on the shard that decides it (the *decider*, whose number is in
-- the low bits of `txid`, as in every id). Its life:
--   begun    the row is inserted and committed on its own, before any other shard prepares, so a
--            prepared branch always names a transaction that exists somewhere durable;
--   decided  `outcome` is set to 'commit' in the decider's own local transaction, together with
--            the decider's share of the work: that local COMMIT is the moment the global
--            transaction commits. Recovery that finds no decision sets 'abort' (presumed abort);
--            both are `UPDATE ... WHERE outcome IS NULL`, so whichever comes first wins, and a
--            recovery that arrives while the coordinator is deciding waits on the row lock for it.
--   finished the row is deleted once every branch is committed or rolled back (by the
--            coordinator, or by recovery's pruning, which relies on the two times below being
--            taken when the statement runs: `clock_timestamp()`, not the transaction's start).
CREATE TABLE two_phase_transactions (
    txid         bigint PRIMARY KEY DEFAULT next_id(),
    participants smallint[] NOT NULL,
    outcome      text CHECK (outcome IN ('commit', 'abort')),
    begun_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    decided_at   timestamptz
);
