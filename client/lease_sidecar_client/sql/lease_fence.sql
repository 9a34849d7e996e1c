-- lease-sidecar's storage-side fence and tick ledger for PostgreSQL (10 or newer), usable from any
-- language: run this file once per database (it is idempotent: run it again to upgrade), then call
-- the functions inside your own transactions.
--
--   BEGIN;
--   SELECT lease_fence('default/my-app', 4711);      -- the Lease that issued the token, the token
--   UPDATE accounts SET ... ;                         -- the fenced write
--   COMMIT;
--
-- The guarantee, per scope (one scope = one Lease, "namespace/name"): a transaction that called
-- lease_fence(scope, T) commits only if no transaction fenced with a token higher than T committed
-- before it in that scope; and fenced transactions of one scope commit in non-decreasing token
-- order, because each holds the scope's row lock (shared for an equal token, exclusive to raise
-- it) until it ends. A stale token raises SQLSTATE LF001 ("stale fencing token") and the
-- transaction can only roll back. Tokens of a scope only go up; lease_fence_reset(scope) is the
-- only way down (for an etcd restored from a backup, whose tokens restart lower).
--
-- Timeouts: a writer paused inside its fenced transaction keeps the row lock (and may commit after
-- its term). End it with SET LOCAL idle_in_transaction_session_timeout below the term's remaining
-- time (it counts only idle time between statements) and, on PostgreSQL 17 or newer, SET LOCAL
-- transaction_timeout (the whole transaction), as the Python helpers do.
--
-- Savepoints: rolling back to a savepoint taken before lease_fence() undoes the fence and releases
-- its row lock, so the transaction's later writes are not fenced. Call it in the top-level
-- transaction before any savepoint (or after the last rollback to one); a PL/pgSQL block with an
-- EXCEPTION clause is a savepoint too.
--
-- Isolation: written for READ COMMITTED (PostgreSQL's default), where a fence that waited on the
-- lock sees the token committed meanwhile. Under REPEATABLE READ or SERIALIZABLE a concurrent raise
-- of the token surfaces as a serialization failure (SQLSTATE 40001): roll back and retry, and the
-- retry sees the new token.
--
-- The ledger: lease_claim_tick(scope, job, scheduled_at, token) fences, then claims the tick
-- (job, scheduled time) for good: true for the one call that claimed it, false for every other,
-- in any term. A job whose effect commits in the claim's transaction runs exactly once per tick;
-- otherwise (claim committed first, effect elsewhere) at most once, and a tick claimed but never
-- finished (lease_finish_tick) stays in lease_unfinished_ticks, reported, never rerun.

CREATE TABLE IF NOT EXISTS lease_fence_scopes (
    scope      text        PRIMARY KEY,
    token      bigint      NOT NULL,
    raised_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS lease_tick_ledger (
    scope         text        NOT NULL,
    job           text        NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    token         bigint      NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    PRIMARY KEY (scope, job, scheduled_at)
);

-- Raises SQLSTATE LF001 unless `token` is at least the highest token this scope has seen; records
-- a higher one. Holds the scope's row lock until the caller's transaction ends. Returns `token`.
CREATE OR REPLACE FUNCTION lease_fence(scope text, token bigint) RETURNS bigint
LANGUAGE plpgsql AS $fence$
#variable_conflict use_column
DECLARE
    held bigint;
BEGIN
    IF lease_fence.scope IS NULL OR lease_fence.token IS NULL THEN
        RAISE EXCEPTION 'lease_fence: scope and token must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- A first look without a lock decides which lock to take, so that no transaction ever asks
    -- to upgrade a shared lock it holds (two doing so would deadlock).
    SELECT s.token INTO held FROM lease_fence_scopes s WHERE s.scope = lease_fence.scope;
    IF NOT FOUND THEN
        INSERT INTO lease_fence_scopes AS s (scope, token) VALUES (lease_fence.scope, lease_fence.token)
        ON CONFLICT (scope) DO NOTHING;
        IF FOUND THEN
            RETURN lease_fence.token;  -- our new row stays locked until we end
        END IF;
        held := NULL;  -- another transaction created it meanwhile: lock it below
    END IF;
    IF held IS NOT NULL AND held >= lease_fence.token THEN
        -- Same term (or a stale one): a shared lock lets one term's writers run side by side,
        -- and keeps a higher token's update waiting until they end.
        SELECT s.token INTO held FROM lease_fence_scopes s WHERE s.scope = lease_fence.scope FOR SHARE;
    ELSE
        SELECT s.token INTO held FROM lease_fence_scopes s WHERE s.scope = lease_fence.scope FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        -- Reset between our two looks: start the scope afresh (this row is then locked by us).
        INSERT INTO lease_fence_scopes AS s (scope, token) VALUES (lease_fence.scope, lease_fence.token)
        ON CONFLICT (scope) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'lease_fence: scope % reset and re-created concurrently; retry', lease_fence.scope
                USING ERRCODE = 'serialization_failure';
        END IF;
        RETURN lease_fence.token;
    END IF;
    IF lease_fence.token < held THEN
        RAISE EXCEPTION 'stale fencing token % for scope %: % already seen', lease_fence.token, lease_fence.scope, held
            USING ERRCODE = 'LF001',
                  HINT = 'this term has ended; roll back (a newer leader writes now)';
    END IF;
    IF lease_fence.token > held THEN
        UPDATE lease_fence_scopes s SET token = lease_fence.token, raised_at = now()
        WHERE s.scope = lease_fence.scope;
    END IF;
    RETURN lease_fence.token;
END
$fence$;

-- The only way a scope's token goes down: forget it (its next fence starts it afresh). Returns
-- whether the scope existed.
CREATE OR REPLACE FUNCTION lease_fence_reset(scope text) RETURNS boolean
LANGUAGE plpgsql AS $reset$
#variable_conflict use_column
BEGIN
    DELETE FROM lease_fence_scopes s WHERE s.scope = lease_fence_reset.scope;
    RETURN FOUND;
END
$reset$;

-- Fences, then claims the tick: true for the single call that claims (job, scheduled_at) in this
-- scope, false when it was claimed before (by any term). Call it in the transaction that commits
-- the job's effect for exactly once.
CREATE OR REPLACE FUNCTION lease_claim_tick(scope text, job text, scheduled_at timestamptz, token bigint)
RETURNS boolean
LANGUAGE plpgsql AS $claim$
#variable_conflict use_column
BEGIN
    PERFORM lease_fence(lease_claim_tick.scope, lease_claim_tick.token);
    INSERT INTO lease_tick_ledger AS l (scope, job, scheduled_at, token)
    VALUES (lease_claim_tick.scope, lease_claim_tick.job, lease_claim_tick.scheduled_at, lease_claim_tick.token)
    ON CONFLICT (scope, job, scheduled_at) DO NOTHING;
    RETURN FOUND;
END
$claim$;

-- Marks a claimed tick finished (its job ran to the end). Not fenced: it records what happened,
-- and a term that ended while its job ran still tells the truth about it. Returns whether this
-- call marked it (false: not claimed with this token, or already finished).
CREATE OR REPLACE FUNCTION lease_finish_tick(scope text, job text, scheduled_at timestamptz, token bigint)
RETURNS boolean
LANGUAGE plpgsql AS $finish$
#variable_conflict use_column
BEGIN
    UPDATE lease_tick_ledger l SET finished_at = clock_timestamp()
    WHERE l.scope = lease_finish_tick.scope AND l.job = lease_finish_tick.job
      AND l.scheduled_at = lease_finish_tick.scheduled_at AND l.token = lease_finish_tick.token
      AND l.finished_at IS NULL;
    RETURN FOUND;
END
$finish$;

-- The latest tick of a job claimed in a scope (null if none): where a new leader's catch-up starts.
CREATE OR REPLACE FUNCTION lease_last_tick(scope text, job text) RETURNS timestamptz
LANGUAGE sql STABLE AS $last$
    SELECT max(l.scheduled_at) FROM lease_tick_ledger l WHERE l.scope = $1 AND l.job = $2
$last$;

-- Ticks claimed but never finished: their job started and did not report its end (it failed, or
-- its term ended while it ran, or it still runs). Never rerun; reported.
CREATE OR REPLACE VIEW lease_unfinished_ticks AS
    SELECT scope, job, scheduled_at, token, claimed_at
    FROM lease_tick_ledger
    WHERE finished_at IS NULL;
