-- The leaderboards page through users, teams and hosts by total and by recent average
-- credit; with these indexes a page reads its rows in order instead of sorting the table.

-- Recent average credit decays with time from when it was last updated, so the stored
-- values cannot be compared as they are: 1000 stored 60 days ago is less than 500 stored
-- today. Their logarithms decayed to any common moment compare the same way as this key,
-- which does not change with time and so can be indexed.
create function recent_rank_key(average double precision, average_time timestamptz)
returns double precision
language sql immutable as $$
    select case
        when average is null or average <= 0 or average_time is null then '-infinity'::float8
        else ln(average) + extract(epoch from average_time) * ln(2) / (7 * 86400.0)
    end
$$;

-- Kept in a column (rather than an expression index) so that skipping to a deep page reads
-- the index alone.
alter table account add column recent_rank double precision
    generated always as (recent_rank_key(expavg_credit, expavg_time)) stored;
alter table team add column recent_rank double precision
    generated always as (recent_rank_key(expavg_credit, expavg_time)) stored;
alter table host add column recent_rank double precision
    generated always as (recent_rank_key(expavg_credit, expavg_time)) stored;

create index account_total_credit on account (total_credit desc, id);
create index account_recent_rank on account (recent_rank desc, id);
create index team_total_credit on team (total_credit desc, id);
create index team_recent_rank on team (recent_rank desc, id);
create index host_total_credit on host (total_credit desc, id);
create index host_recent_rank on host (recent_rank desc, id);
-- A team's members.
create index account_team_id on account (team_id, total_credit desc);
-- Recent results of a host, newest first.
create index replica_host_received on replica (host_id, received_at desc) where received_at is not null;
-- The status page's replicas per hour, and the totals' credit of the last hour.
create index replica_received_at on replica (received_at) where received_at is not null;
create index credit_grant_granted_at on credit_grant (granted_at);
