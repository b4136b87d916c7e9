-- hoardfs schema, migration 014: events and webhook deliveries.
--
-- An `event` row is a fact a person or another system may want to hear of at once: a batch
-- ingested, an action run finished or failed, a run waiting at its GPU gate, a dataset version
-- built, a disk failed. The names are contracts (webhook receivers match on them). Each event
-- has an idempotency key chosen by its emitter (`batch_ingested:<batch>`, `run_failed:<run>:<attempt>`,
-- …), so a step run again after a crash records it once and its webhooks hear of it once.
--
-- A `webhook_delivery` row is one event to one webhook of hoard.toml's [[webhooks]]: made pending
-- in the event's transaction (an outbox: no event is recorded without its deliveries), then
-- POSTed by the RQ job `jobs.events.deliver` (queue `events`), retried with exponential backoff,
-- until the receiver answers 2xx (delivered) or the webhook's `tries` are spent (failed, with
-- the last error). The webhook's URL and secret are never stored here: the URL may carry a
-- token (a chat service's hook path), the secret signs bodies. A delivery names its webhook
-- by a display name and the sha256 of its URL, which the job matches against hoard.toml.
--
-- Kept 90 days (sql.events.KEEP): every recorded event deletes the older ones in its own
-- transaction, their deliveries with them (ON DELETE CASCADE) — as sql/usage.py prunes samples.

CREATE TABLE event (
    event_id  bigserial PRIMARY KEY,
    name      text NOT NULL CHECK (name IN ('batch_ingested', 'run_finished', 'run_failed', 'gate_waiting',
                                            'dataset_built', 'disk_failed')),
    key       text NOT NULL UNIQUE CHECK (key <> ''),  -- the emitter's idempotency key
    at        timestamptz NOT NULL DEFAULT now(),      -- when the fact happened (the database's clock, or the index's for disk_failed)
    subject   text NOT NULL,                           -- what it is about: batch id, run id, dataset NAME@N, disk label
    detail    jsonb NOT NULL DEFAULT '{}'              -- the emitter's figures (JSON object)
);
CREATE INDEX event_at ON event (at);
CREATE INDEX event_name_at ON event (name, at);

CREATE TABLE webhook_delivery (
    delivery_id     bigserial PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES event ON DELETE CASCADE,
    webhook         text NOT NULL,             -- the webhook's display name (its `name`, else scheme://host:port of its URL)
    url_sha256      text NOT NULL CHECK (url_sha256 ~ '^[0-9a-f]{64}$'),  -- which [[webhooks]] url (never the URL itself)
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_tries       integer NOT NULL CHECK (max_tries >= 1),
    next_attempt_at timestamptz,               -- pending: when its next try is due; NULL once delivered or failed
    last_attempt_at timestamptz,               -- NULL before the first try
    last_status     integer,                   -- the receiver's HTTP status at the last try; NULL = no answer
    last_error      text,                      -- one line: why the last try failed; NULL when delivered
    delivered_at    timestamptz,               -- when the receiver answered 2xx
    UNIQUE (event_id, url_sha256),
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE INDEX webhook_delivery_due ON webhook_delivery (next_attempt_at) WHERE state = 'pending';

COMMENT ON TABLE event IS 'Facts others may want to hear of (batch_ingested, run_finished, run_failed, gate_waiting, dataset_built, disk_failed), once each by key; kept 90 days (sql.events).';
COMMENT ON COLUMN event.event_id IS 'The event''s number; a webhook body''s "id"';
COMMENT ON COLUMN event.name IS 'One of the contract names: batch_ingested, run_finished, run_failed, gate_waiting, dataset_built, disk_failed';
COMMENT ON COLUMN event.key IS 'The emitter''s idempotency key: the same fact emitted again (a step re-run) is recorded once';
COMMENT ON COLUMN event.at IS 'When the fact happened (the database''s clock; the index''s for disk_failed)';
COMMENT ON COLUMN event.subject IS 'What the event is about: a batch id, a run id, a dataset NAME@N, a disk label';
COMMENT ON COLUMN event.detail IS 'The emitter''s figures, a JSON object (the webhook body''s "detail")';
COMMENT ON TABLE webhook_delivery IS 'One event to one webhook of hoard.toml: pending until the receiver answers 2xx (delivered) or its tries are spent (failed); deleted with its event.';
COMMENT ON COLUMN webhook_delivery.delivery_id IS 'The delivery''s number; the X-Hoard-Delivery header';
COMMENT ON COLUMN webhook_delivery.event_id IS 'The event delivered';
COMMENT ON COLUMN webhook_delivery.webhook IS 'The webhook''s display name: its name in hoard.toml, else the scheme, host and port of its URL (the path may hold a token)';
COMMENT ON COLUMN webhook_delivery.url_sha256 IS 'sha256 of the webhook''s URL: which [[webhooks]] table the job posts to (the URL itself is never stored)';
COMMENT ON COLUMN webhook_delivery.state IS 'pending (a try is due at next_attempt_at), delivered (2xx) or failed (max_tries spent, or the webhook left hoard.toml)';
COMMENT ON COLUMN webhook_delivery.attempts IS 'Tries made so far';
COMMENT ON COLUMN webhook_delivery.max_tries IS 'The webhook''s `tries` when the event was recorded';
COMMENT ON COLUMN webhook_delivery.next_attempt_at IS 'When the next try is due (pending only); a pending delivery long overdue lost its job and is queued again';
COMMENT ON COLUMN webhook_delivery.last_attempt_at IS 'When the last try was made; NULL before the first';
COMMENT ON COLUMN webhook_delivery.last_status IS 'The HTTP status the receiver answered the last try with; NULL when it did not answer';
COMMENT ON COLUMN webhook_delivery.last_error IS 'One line: why the last try failed (HTTP status and the first line of the answer, or the connection''s error); NULL when delivered';
COMMENT ON COLUMN webhook_delivery.delivered_at IS 'When the receiver answered 2xx; NULL otherwise';
