-- voxgate shared store, schema 1. Applied by the gateway itself (src/store/postgres.rs) under
-- an advisory lock, once, in a transaction; recorded in voxgate_migrations.
-- Every row names the node that wrote it. `uid` is the record's unique id: the spool may send
-- a record twice after a crash, and the second insert is ignored.

CREATE TABLE cdrs (
    seq         bigserial PRIMARY KEY,
    uid         text NOT NULL UNIQUE,
    node        text NOT NULL,
    call_id     text NOT NULL,
    started_at  timestamptz,
    ended_at    timestamptz,
    body        jsonb NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cdrs_call_id ON cdrs (call_id);
CREATE INDEX cdrs_ended_at ON cdrs (ended_at DESC);

CREATE TABLE events (
    seq         bigserial PRIMARY KEY,
    uid         text NOT NULL UNIQUE,
    node        text NOT NULL,
    call_id     text,
    name        text NOT NULL,
    at          timestamptz NOT NULL,
    body        jsonb NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_call_id ON events (call_id);
CREATE INDEX events_name_at ON events (name, at DESC);

CREATE TABLE transcripts (
    seq         bigserial PRIMARY KEY,
    uid         text NOT NULL UNIQUE,
    node        text NOT NULL,
    call_id     text NOT NULL,
    body        jsonb NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transcripts_call_id ON transcripts (call_id);

-- One row per recording, updated as its sidecar changes. `shared_key` is set once a verified
-- copy is in shared storage. Deleted recordings keep a tombstone (deleted_at) so a late
-- update from the recording node cannot bring them back.
CREATE TABLE recordings (
    id          text PRIMARY KEY,
    node        text NOT NULL,
    call_id     text NOT NULL,
    started_at  timestamptz NOT NULL,
    status      text NOT NULL,
    shared_key  text,
    body        jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX recordings_started ON recordings (started_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX recordings_call_id ON recordings (call_id);

-- The flow's tables (`table` step): one row per table row, columns in `data`.
CREATE TABLE table_rows (
    seq         bigserial PRIMARY KEY,
    table_name  text NOT NULL,
    data        jsonb NOT NULL,
    node        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX table_rows_table ON table_rows (table_name, seq);
CREATE INDEX table_rows_data ON table_rows USING gin (data jsonb_path_ops);
