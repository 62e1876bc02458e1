-- Each carrier integration's health as the fetchers see it (the latest report wins), for /v1/carriers/health and
-- trackctl; and carrier answers that could not be read, kept whole so they can be replayed once the parser is fixed.

CREATE TABLE carrier_health (
    carrier     TEXT PRIMARY KEY,
    -- ok | degraded | broken
    state       TEXT NOT NULL,
    reason      TEXT,
    -- Counts over the fetcher's window: auth_failures, http_errors, timeouts, unreadable, stale_codes, calls.
    counters    JSONB NOT NULL DEFAULT '{}',
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE carrier_responses (
    id            BIGSERIAL PRIMARY KEY,
    carrier       TEXT NOT NULL,
    -- The tracking requests the call was made for (JSON array), so a replay can publish their events.
    requests      JSONB NOT NULL,
    http_status   INTEGER,
    body          TEXT NOT NULL,
    error         TEXT NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at   TIMESTAMPTZ,
    replay_error  TEXT
);
CREATE INDEX carrier_responses_pending ON carrier_responses (received_at) WHERE replayed_at IS NULL;
