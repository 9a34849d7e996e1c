-- The example beat's own tables (the ledger and the fence come from lease_fence.sql).
--
-- beat_effects: one row per execution of a job, with nothing unique in it, on purpose: it counts
-- what really ran, so a tick that ran twice shows as two rows. (The tick ledger cannot show that:
-- its claim forbids a second row by construction.)
CREATE TABLE IF NOT EXISTS beat_effects (
    job          text        NOT NULL,
    scheduled_at timestamptz NOT NULL,
    token        bigint,               -- the fencing token of the term that ran it (naive: as read)
    pod          text        NOT NULL,
    mode         text        NOT NULL, -- fenced | naive | celery
    caught_up    boolean     NOT NULL DEFAULT false, -- run by a new leader's catch-up, not on time
    executed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS beat_effects_by_tick ON beat_effects (job, scheduled_at);

-- beat_refusals: a write the fence refused (a stale token: a later term had fenced the scope) or
-- that never committed because the term ended under it (the server ended the paused session).
-- Written after the refused transaction rolled back, in a transaction of its own.
CREATE TABLE IF NOT EXISTS beat_refusals (
    job          text        NOT NULL,
    scheduled_at timestamptz NOT NULL,
    token        bigint,
    pod          text        NOT NULL,
    reason       text        NOT NULL, -- stale_token | session_ended
    refused_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
