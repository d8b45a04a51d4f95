-- The core data model: volunteers and their machines, the published apps, and the work
-- units with their replicas (BOINC's "results").

-- BOINC's recent average credit: an exponentially decaying average of credit per day,
-- with a 7-day half-life, updated whenever new credit arrives. `work` is the new credit,
-- granted at `now`; the average was last updated at `avg_time`.
create function decayed_average(avg double precision, avg_time timestamptz,
                                work double precision, now timestamptz)
returns double precision
language sql immutable as $$
    select case
        when avg_time is null or now <= avg_time then
            avg + work * ln(2) / 7.0
        else
            avg * exp(-extract(epoch from (now - avg_time)) / 86400.0 * ln(2) / 7.0)
            + case
                -- For a short interval the exact formula divides two tiny numbers; use its
                -- limit instead, as BOINC does.
                when extract(epoch from (now - avg_time)) < 1.0 then work * ln(2) / 7.0
                else (1 - exp(-extract(epoch from (now - avg_time)) / 86400.0 * ln(2) / 7.0))
                     * work / (extract(epoch from (now - avg_time)) / 86400.0)
              end
    end
$$;

create table team (
    id bigint generated always as identity primary key,
    name text not null unique,
    description text not null default '',
    total_credit double precision not null default 0,
    expavg_credit double precision not null default 0,
    expavg_time timestamptz,
    created_at timestamptz not null default now()
);

create table account (
    id bigint generated always as identity primary key,
    name text not null,
    -- SHA-256 of the account key; the key itself is shown once and never stored.
    key_hash bytea not null unique,
    team_id bigint references team (id),
    total_credit double precision not null default 0,
    expavg_credit double precision not null default 0,
    expavg_time timestamptz,
    created_at timestamptz not null default now()
);

create table host (
    id bigint generated always as identity primary key,
    account_id bigint not null references account (id),
    -- SHA-256 of the host token.
    token_hash bytea not null unique,
    name text not null,
    os text not null,
    arch text not null,
    cores integer not null check (cores > 0),
    memory_bytes bigint not null check (memory_bytes >= 0),
    client_version text not null,
    last_contact_at timestamptz,
    -- Trust, as BOINC keeps it: errors and invalid results shrink the daily quota and
    -- reset the run of consecutive valid results; valid results grow them again.
    error_count bigint not null default 0,
    invalid_count bigint not null default 0,
    valid_count bigint not null default 0,
    consecutive_valid integer not null default 0,
    daily_quota integer not null,
    replicas_today integer not null default 0,
    quota_day date not null default current_date,
    total_credit double precision not null default 0,
    expavg_credit double precision not null default 0,
    expavg_time timestamptz,
    created_at timestamptz not null default now()
);
create index host_account_id on host (account_id);

-- Content-addressed files: modules, inputs and outputs. The bytes live in the blob store.
create table blob (
    sha256 text primary key check (sha256 ~ '^[0-9a-f]{64}$'),
    bytes bigint not null check (bytes >= 0),
    created_at timestamptz not null default now()
);

create table app (
    id bigint generated always as identity primary key,
    name text not null unique,
    description text not null default '',
    -- 'bitwise' compares output hashes; custom validators come with their own module.
    validator text not null default 'bitwise',
    created_at timestamptz not null default now()
);

create table app_version (
    id bigint generated always as identity primary key,
    app_id bigint not null references app (id),
    version integer not null,
    module_sha256 text not null references blob (sha256),
    created_at timestamptz not null default now(),
    unique (app_id, version)
);

create table batch (
    id bigint generated always as identity primary key,
    app_id bigint not null references app (id),
    name text not null default '',
    created_at timestamptz not null default now()
);
create index batch_app_id on batch (app_id);

create type work_unit_state as enum ('active', 'validated', 'failed');

create table work_unit (
    id bigint generated always as identity primary key,
    batch_id bigint not null references batch (id),
    app_version_id bigint not null references app_version (id),
    name text not null,
    args jsonb not null default '[]',
    -- Standard input of the run, if any.
    stdin_sha256 text references blob (sha256),
    seed bigint not null,
    -- The replication policy.
    min_quorum integer not null check (min_quorum >= 1),
    target_replicas integer not null check (target_replicas >= min_quorum),
    max_error_replicas integer not null check (max_error_replicas >= 1),
    max_total_replicas integer not null check (max_total_replicas >= target_replicas),
    delay_bound interval not null check (delay_bound > interval '0'),
    -- Per-run limits.
    fuel_limit bigint not null check (fuel_limit > 0),
    memory_limit_bytes bigint not null check (memory_limit_bytes > 0),
    output_limit_bytes bigint not null check (output_limit_bytes > 0),
    wall_time_limit_seconds bigint not null check (wall_time_limit_seconds > 0),
    state work_unit_state not null default 'active',
    failure_reason text,
    canonical_replica_id bigint,
    -- Credit each valid replica earned: the median fuel of the agreeing replicas, scaled.
    credit double precision,
    finished_at timestamptz,
    created_at timestamptz not null default now(),
    unique (batch_id, name),
    -- A work unit ends exactly once, one way or the other.
    check ((state = 'active' and finished_at is null and canonical_replica_id is null and failure_reason is null)
        or (state = 'validated' and finished_at is not null and canonical_replica_id is not null and failure_reason is null)
        or (state = 'failed' and finished_at is not null and canonical_replica_id is null and failure_reason is not null))
);
create index work_unit_batch_id on work_unit (batch_id, state);

-- Files placed in the run's read-only input directory.
create table work_unit_file (
    work_unit_id bigint not null references work_unit (id),
    name text not null,
    sha256 text not null references blob (sha256),
    created_at timestamptz not null default now(),
    primary key (work_unit_id, name)
);

create type replica_state as enum ('unsent', 'in_progress', 'over');
create type replica_outcome as enum ('success', 'client_error', 'no_reply', 'didnt_need', 'validate_error');
create type validate_state as enum ('pending', 'valid', 'invalid', 'inconclusive');

create table replica (
    id bigint generated always as identity primary key,
    work_unit_id bigint not null references work_unit (id),
    state replica_state not null default 'unsent',
    outcome replica_outcome,
    validate_state validate_state not null default 'pending',
    -- Retries are sent before first copies, so a work unit that needs one more replica
    -- finishes instead of waiting behind the whole queue.
    priority integer not null default 0,
    host_id bigint references host (id),
    account_id bigint references account (id),
    sent_at timestamptz,
    deadline_at timestamptz,
    received_at timestamptz,
    -- Set by the upload, then confirmed by the report.
    uploaded_sha256 text,
    output_sha256 text references blob (sha256),
    output_bytes bigint,
    fuel_used bigint,
    run_time_ms bigint,
    exit_status integer,
    stderr text,
    error_reason text,
    credit double precision,
    created_at timestamptz not null default now(),
    -- A replica is sent to a host, or not; one never sent may still end (not needed).
    check (state <> 'unsent' or host_id is null),
    check (state <> 'in_progress' or (host_id is not null and deadline_at is not null)),
    check ((state = 'over') = (outcome is not null))
);
create index replica_work_unit_id on replica (work_unit_id);
-- The scheduler's queue: only unsent replicas, in the order they are handed out.
create index replica_unsent on replica (priority desc, id) where state = 'unsent';
-- The deadline sweep.
create index replica_deadline on replica (deadline_at) where state = 'in_progress';
create index replica_host_id on replica (host_id, state);
-- One volunteer account never holds two replicas of one work unit.
create unique index replica_one_per_account on replica (work_unit_id, account_id)
    where account_id is not null;

-- Credit granted to valid replicas, written in the same transaction as the validation and
-- folded into host, account and team totals by a background sweep. The primary key makes a
-- second grant for one replica impossible; the sweep keeps host rows out of the hot path.
create table credit_grant (
    replica_id bigint primary key references replica (id),
    host_id bigint not null references host (id),
    account_id bigint not null references account (id),
    credit double precision not null check (credit >= 0),
    granted_at timestamptz not null default now(),
    applied boolean not null default false
);
create index credit_grant_unapplied on credit_grant (replica_id) where not applied;
