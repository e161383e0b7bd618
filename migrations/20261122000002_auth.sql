-- Accounts, sessions, refresh tokens and signing keys (the authentication issue). Portable DDL, as in the
-- first migration: epoch-millisecond BIGINTs, 0/1 BIGINT flags, JSON or comma lists as TEXT.

-- A user who can log in. `id` is the subject of their tokens and the key of their GPS events.
ALTER TABLE users ADD COLUMN username TEXT;
ALTER TABLE users ADD COLUMN password_hash TEXT;
-- Comma-separated roles: mobile, ops, consumer, admin.
ALTER TABLE users ADD COLUMN roles TEXT;
ALTER TABLE users ADD COLUMN disabled_at_ms BIGINT;
ALTER TABLE users ADD COLUMN password_changed_at_ms BIGINT;
CREATE UNIQUE INDEX users_username ON users (username);

-- The source of truth for every login: an access token is only good while its session is.
CREATE TABLE sessions (
    id                     TEXT PRIMARY KEY,
    user_id                TEXT NOT NULL,
    -- The client kind the session was opened for (mobile, ops, consumer): the access tokens' audience.
    client                 TEXT NOT NULL,
    -- Comma-separated roles granted to this session (the user's roles that this client kind may use).
    roles                  TEXT NOT NULL,
    -- Key (base64) that derives each rotated refresh token from the one it replaces, so concurrent
    -- refreshes with the same token get the same answer without storing any token in clear.
    rotation_key           TEXT NOT NULL,
    created_at_ms          BIGINT NOT NULL,
    last_used_at_ms        BIGINT NOT NULL,
    idle_expires_at_ms     BIGINT NOT NULL,
    absolute_expires_at_ms BIGINT NOT NULL,
    revoked_at_ms          BIGINT,
    revoked_reason         TEXT,
    device_label           TEXT,
    user_agent             TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_revoked ON sessions (revoked_at_ms);

-- Refresh tokens by SHA-256 (hex); the token itself is never stored.
CREATE TABLE refresh_tokens (
    token_hash    TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    issued_at_ms  BIGINT NOT NULL,
    -- When it was exchanged for its successor; a use after the grace window revokes the session.
    rotated_at_ms BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Ed25519 signing keys, shared by every API instance through the store.
CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    -- PKCS#8 v2 document, base64.
    private_pkcs8  TEXT NOT NULL,
    -- Raw 32-byte public key, base64url (the JWK "x").
    public_x       TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    -- Signs from this time on (published in the JWKS before, when rotation publishes ahead).
    active_from_ms BIGINT NOT NULL,
    -- Emergency revocation: tokens signed with it are refused at once.
    revoked_at_ms  BIGINT
);
