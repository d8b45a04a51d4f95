-- Quorums that Sybils cannot fill. Each replica remembers the network (IPv4 /24, IPv6 /48)
-- of the host it was handed to, so that no two replicas of one work unit go to one network;
-- an app may allow it (its volunteers share a network).
alter table replica add column if not exists network text;
alter table app add column if not exists distinct_networks boolean not null default true;
