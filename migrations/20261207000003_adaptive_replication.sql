-- Adaptive replication: a host with a long run of valid results for an app version may get a
-- work unit alone, checked at random; a host caught returning a wrong result has every
-- result it had accepted on trust recently sent out again.

-- An app opts in (a per-app policy).
alter table app add column if not exists adaptive_replication boolean not null default false;

-- A host's record for one version of an app: trust starts again with a new version.
-- `consecutive_valid` counts checked results only (replicated, and agreeing); results
-- accepted on trust are never evidence of trust. `accepted_in_a_row` counts both, and sets
-- how rarely a trusted host is checked.
create table if not exists host_app_version (
    host_id bigint not null references host (id),
    app_version_id bigint not null references app_version (id),
    consecutive_valid integer not null default 0 check (consecutive_valid >= 0),
    accepted_in_a_row integer not null default 0 check (accepted_in_a_row >= 0),
    valid_count bigint not null default 0,
    invalid_count bigint not null default 0,
    primary key (host_id, app_version_id)
);

-- A replica handed alone to a trusted host: its work unit's other replicas were no longer
-- needed, and its result may be accepted by itself.
alter table replica add column if not exists on_trust boolean not null default false;

do $$ begin
    create type recheck_state as enum ('pending', 'confirmed', 'corrected');
exception when duplicate_object then null;
end $$;

-- A work unit validated on one trusted host's word (it stays marked so), and what became of it
-- when that host was caught: rechecked by other hosts, then confirmed or corrected. A corrected work unit keeps
-- the replica its result came from before (`replaced_replica_id`) and when it changed.
alter table work_unit
    add column if not exists accepted_on_trust boolean not null default false,
    add column if not exists recheck recheck_state,
    add column if not exists replaced_replica_id bigint references replica (id),
    add column if not exists result_changed_at timestamptz;

-- Hosts caught returning a wrong result, whose results accepted on trust in the look-back
-- window before `caught_at` wait to be sent out again (a sweep takes them in batches).
create table if not exists lookback (
    host_id bigint not null references host (id),
    caught_at timestamptz not null,
    primary key (host_id, caught_at)
);
create index if not exists replica_on_trust on replica (host_id) where on_trust;

-- Credit withdrawn from a replica whose result was found wrong after it had been credited:
-- a ledger entry of its own, so that the grant stays on record beside its withdrawal. A sweep
-- subtracts it from the totals as it adds grants.
create table if not exists credit_withdrawal (
    replica_id bigint primary key references credit_grant (replica_id),
    reason text not null,
    withdrawn_at timestamptz not null default now(),
    applied boolean not null default false
);
create index if not exists credit_withdrawal_unapplied on credit_withdrawal (replica_id) where not applied;
