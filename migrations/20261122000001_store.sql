-- Portable DDL: the same file runs on SQLite and PostgreSQL (through sqlx's Any driver).
-- Times are epoch milliseconds (BIGINT); booleans are 0/1 BIGINTs, because the Any driver maps them the
-- same way on both backends.

CREATE TABLE fences (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    tolerance_m   DOUBLE PRECISION NOT NULL,
    -- The validated GeoJSON geometry (Polygon or MultiPolygon), as text.
    geometry      TEXT NOT NULL,
    vertex_count  BIGINT NOT NULL,
    -- Catalog version of the last change to this fence.
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX fences_name ON fences (name);

CREATE TABLE promotions (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    -- JSON array of fence ids.
    fence_ids      TEXT NOT NULL,
    valid_from_ms  BIGINT,
    valid_until_ms BIGINT,
    active         BIGINT NOT NULL,
    cooldown_ms    BIGINT NOT NULL,
    version        BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL
);

-- Each user's current eligibility, materialised by the processor on transitions.
CREATE TABLE eligibility (
    user_id       TEXT NOT NULL,
    promotion_id  TEXT NOT NULL,
    fence_id      TEXT NOT NULL,
    since_ms      BIGINT NOT NULL,
    event_id      TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, promotion_id)
);

-- One row: bumped by every change to fences or promotions, polled by processors to swap catalogs.
CREATE TABLE catalog_version (
    id      BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0);
