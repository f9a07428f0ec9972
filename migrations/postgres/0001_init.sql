-- The shared store of several tandem nodes (issue #11). Same model as the SQLite schema:
-- per document a snapshot and an append-only log of raw Yjs v1 updates after it.
-- Names compare byte-wise ("C"): the document list pages by name, and its cursor must
-- follow the same order whatever the database's locale.

-- The snapshot is the whole document merged up to and including update `snapshot_seq`.
create table documents (
    name text collate "C" primary key,
    snapshot bytea,
    snapshot_seq bigint not null default 0,
    created_at bigint not null,
    updated_at bigint not null
);

-- The log. Seqs are gapless and in commit order per document: they are allocated from the
-- document's `heads` row inside the writing transaction (`head = head + n`), whose row lock
-- serialises every node's commits to that document. Rows at or below the snapshot's seq
-- are deleted by compaction.
create table updates (
    doc text collate "C" not null,
    seq bigint not null,
    data bytea not null,
    primary key (doc, seq)
);

-- Per document: the highest seq handed out, the times the list shows, the stored bytes.
-- 2^53 - 1 is the largest seq: exact in JavaScript and JSON. `epoch` tells the lives of a
-- name apart: a document deleted and written again starts at seq 1 with a new epoch, so a
-- node still holding the old one notices instead of mixing the two.
create sequence tandem_epoch;
create table heads (
    doc text collate "C" primary key,
    head bigint not null check (head between 0 and 9007199254740991),
    epoch bigint not null default nextval('tandem_epoch'),
    created_at bigint not null,
    updated_at bigint not null,
    bytes bigint not null default 0
);

-- The deny list (see the SQLite schema); a change is announced on `tandem_revocations`.
create table revocations (
    kind text not null check (kind in ('jti', 'sub')),
    value text not null,
    revoked_at bigint not null,
    primary key (kind, value)
);

create table meta (
    key text primary key,
    value text not null
);
