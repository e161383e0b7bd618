-- Deleted fences with the catalog version that deleted them, so that followers apply a change by reading
-- what changed since their version (fences.version > v, fence_deletions.version > v) instead of every fence.
CREATE TABLE fence_deletions (
    id      TEXT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX fence_deletions_version ON fence_deletions (version);
CREATE INDEX fences_version ON fences (version);
