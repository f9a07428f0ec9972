-- Per-document head: the highest seq handed out so far, and the times the document list
-- shows. The store allocates seqs from this row inside the writing transaction, so seqs are
-- gapless and in commit order whoever writes. It is kept apart from `documents` because that
-- row also holds the snapshot blob: touching it on every commit made SQLite rewrite the
-- whole blob, so commit cost grew with the document's size.
create table heads (
    doc text primary key not null,
    head integer not null,
    created_at integer not null,
    updated_at integer not null
) without rowid;

insert into heads (doc, head, created_at, updated_at)
select d.name,
       max(d.snapshot_seq, coalesce((select max(u.seq) from updates u where u.doc = d.name), 0)),
       d.created_at,
       d.updated_at
from documents d;

-- Facts about the database itself. `opened_at` is written at every start: a write that
-- must succeed, so a read-only database fails at startup instead of at the first edit.
create table meta (
    key text primary key not null,
    value text not null
) without rowid;
