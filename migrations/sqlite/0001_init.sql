-- One row per document that has ever been written. The snapshot is the whole document
-- merged up to and including update seq `snapshot_seq`; rows of `updates` with a higher seq
-- are the tail that still has to be applied on load.
create table documents (
    name text primary key not null,
    snapshot blob,
    snapshot_seq integer not null default 0,
    created_at integer not null,
    updated_at integer not null
);

-- The append-only log: raw Yjs v1 updates in the order the room applied them. A room is the
-- only writer of its document's rows; compaction deletes the rows a snapshot covers.
create table updates (
    doc text not null,
    seq integer not null,
    data blob not null,
    primary key (doc, seq)
) without rowid;
