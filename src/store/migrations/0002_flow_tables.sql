-- voxgate shared store, schema 2: the flow's tables (`table` step, /v1/tables) shared by every
-- node. `flow_tables` lists each table and its columns (in order); its rows are in
-- `table_rows` (schema 1), one JSON object of column -> text value per row, `seq` being the
-- row's `_id`. Dropping a table drops its rows.

CREATE TABLE flow_tables (
    name         text PRIMARY KEY,
    columns      jsonb NOT NULL,
    seed_sha256  text,
    node         text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE table_rows
    ADD CONSTRAINT table_rows_table_fk FOREIGN KEY (table_name)
    REFERENCES flow_tables (name) ON DELETE CASCADE;
