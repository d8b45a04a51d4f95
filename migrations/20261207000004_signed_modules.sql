-- Signed modules: a publisher's Ed25519 keys, its signature of each module version, and the
-- app versions hosts refused to run because the signature did not verify under the keys
-- their volunteers pinned.

-- Every key a publisher registered, in order; the one not retired is its current key. A key
-- that replaced another carries the old key's signature of it (`endorsement`), which
-- volunteers' clients check before they follow the change; none when the publisher lost
-- the old key.
create table if not exists publisher_key (
    id bigint generated always as identity primary key,
    publisher_id bigint not null references publisher (id),
    public_key text not null unique,
    endorsement text,
    created_at timestamptz not null default now(),
    retired_at timestamptz
);
create unique index if not exists publisher_key_current on publisher_key (publisher_id) where retired_at is null;

-- The signature of the module's hash, by the publisher's key at the time.
alter table app_version add column if not exists signing_key_id bigint references publisher_key (id);
alter table app_version add column if not exists module_signature text;

-- A host that refused an app version is sent no more of it (it would refuse each one) until
-- its volunteer trusts the key (`wasmgrid trust` clears its refusals).
create table if not exists module_refusal (
    host_id bigint not null references host (id),
    app_version_id bigint not null references app_version (id),
    reason text not null,
    refused_at timestamptz not null default now(),
    primary key (host_id, app_version_id)
);
