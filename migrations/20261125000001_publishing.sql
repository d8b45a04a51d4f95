-- Publishers: the scientists who own apps and batches. Each has one or more tokens
-- (`wasmgrid-server token create --scope publish`), stored as SHA-256 hashes like the
-- volunteers' secrets; a volunteer's key is never a publisher token.

create table publisher (
    id bigint generated always as identity primary key,
    name text not null unique,
    created_at timestamptz not null default now()
);

create table publisher_token (
    id bigint generated always as identity primary key,
    publisher_id bigint not null references publisher (id),
    token_hash bytea not null unique,
    created_at timestamptz not null default now()
);
create index publisher_token_publisher_id on publisher_token (publisher_id);

-- Nothing has been published before this migration, so the new ownership column can be
-- required at once. App names are unique per publisher, so that one publisher's names say
-- nothing about another's.
alter table app add column publisher_id bigint not null references publisher (id);
alter table app drop constraint app_name_key;
alter table app add constraint app_publisher_name_key unique (publisher_id, name);
alter table app add column validator_module_sha256 text references blob (sha256);
alter table app add constraint app_validator_module check (
    (validator = 'bitwise' and validator_module_sha256 is null)
    or (validator = 'wasm' and validator_module_sha256 is not null));

-- A batch is open while its work units are being submitted (in chunks, resumably), then
-- closed; or cancelled by its publisher.
alter table batch add column closed_at timestamptz;
alter table batch add column cancelled_at timestamptz;
-- The app version a batch runs, fixed when it is opened: a batch submitted in several
-- chunks never mixes versions, even if a new one is published meanwhile.
alter table batch add column app_version_id bigint references app_version (id);

-- Work units of an app with a validator module wait here until the server has compared
-- their outputs outside the report's transaction.
alter table work_unit add column awaiting_comparison boolean not null default false;
-- A server process comparing a work unit's outputs holds it until then, so that several
-- processes share the comparisons instead of all doing each one.
alter table work_unit add column comparing_until timestamptz;
create index work_unit_awaiting_comparison on work_unit (id) where awaiting_comparison;

-- What a validator module said about two outputs, so each pair is compared once. The pair
-- is stored in hash order (validators are symmetric).
create table output_comparison (
    validator_sha256 text not null references blob (sha256),
    a_sha256 text not null references blob (sha256),
    b_sha256 text not null references blob (sha256),
    equivalent boolean not null,
    -- Set when the validator itself failed (trapped, ran out of fuel, exited with another
    -- status); the outputs then count as different.
    error text,
    created_at timestamptz not null default now(),
    primary key (validator_sha256, a_sha256, b_sha256),
    check (a_sha256 < b_sha256),
    check (error is null or not equivalent)
);

-- Validator failures, for the publisher: each is shown with the batch of its work unit.
create table validator_failure (
    id bigint generated always as identity primary key,
    work_unit_id bigint not null references work_unit (id),
    message text not null,
    created_at timestamptz not null default now()
);
create index validator_failure_work_unit_id on validator_failure (work_unit_id);
