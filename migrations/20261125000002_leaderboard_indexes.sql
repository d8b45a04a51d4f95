-- The leaderboards page through users, teams and hosts by total and by recent average
-- credit; with these indexes a page reads its rows in order instead of sorting the table.
create index account_total_credit on account (total_credit desc, id);
create index account_expavg_credit on account (expavg_credit desc, id);
create index team_total_credit on team (total_credit desc, id);
create index team_expavg_credit on team (expavg_credit desc, id);
create index host_total_credit on host (total_credit desc, id);
create index host_expavg_credit on host (expavg_credit desc, id);
-- A team's members.
create index account_team_id on account (team_id, total_credit desc);
-- Recent results of a host, newest first.
create index replica_host_received on replica (host_id, received_at desc) where received_at is not null;
