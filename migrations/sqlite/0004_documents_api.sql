-- Issue #10. The stored size of each document (snapshot + log rows), kept with its head so
-- that listing 100,000 documents reads one small row each and never a snapshot blob.
alter table heads add column bytes integer not null default 0;

update heads set bytes =
    coalesce((select length(d.snapshot) from documents d where d.name = heads.doc), 0)
  + coalesce((select sum(length(u.data)) from updates u where u.doc = heads.doc), 0);

-- The webhook outbox: one row per event owed to one receiver URL, written in the same
-- transaction as the commit (or deletion) that caused it and deleted only after the
-- receiver answered 2xx. `document.updated` rows stay `open` while they may still absorb
-- later writes (the debounce); a deletion closes them, so events of a re-created document
-- never fold into ones from before its deletion. Rows of one (url, doc) are delivered in
-- id order.
create table webhook_outbox (
    id integer primary key autoincrement,
    url text not null,
    doc text not null,
    event text not null,
    seq integer not null,
    -- When the last write this event stands for was committed (ms since the epoch).
    updated_at integer not null,
    -- When the row started absorbing writes (bounds the debounce: at most every max-wait).
    first_at integer not null,
    -- Not delivered before this (the debounce), nor before retry_at (the backoff).
    due_at integer not null,
    retry_at integer not null default 0,
    open integer not null default 0,
    attempts integer not null default 0,
    last_error text,
    last_attempt_at integer
);

create unique index webhook_outbox_open on webhook_outbox (url, doc) where open = 1;
create index webhook_outbox_order on webhook_outbox (url, doc, id);
create index webhook_outbox_due on webhook_outbox (due_at);
