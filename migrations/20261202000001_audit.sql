-- The audit trail: every change made through the API to fences, promotions, users, sessions and keys.
-- `id` sorts in time order (zero-padded epoch milliseconds, then a random suffix), so pages follow it.
CREATE TABLE audit_log (
    id      TEXT PRIMARY KEY,
    at_ms   BIGINT NOT NULL,
    -- The subject of the caller's token (a user id).
    actor   TEXT NOT NULL,
    -- What was done, e.g. `fence.upsert`, `promotion.delete`, `user.disable`, `key.rotate`.
    action  TEXT NOT NULL,
    -- What it was done to (a fence, promotion, user, session or key id).
    target  TEXT NOT NULL,
    -- The peer address of the request.
    remote  TEXT NOT NULL,
    detail  TEXT
);
