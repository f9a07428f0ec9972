-- The deny list (issue #9): tokens revoked by jti, users revoked by sub. revoked_at is in
-- seconds since the epoch; for a sub, tokens issued at or before it are refused.
create table revocations (
    kind text not null check (kind in ('jti', 'sub')),
    value text not null,
    revoked_at integer not null,
    primary key (kind, value)
) without rowid;
