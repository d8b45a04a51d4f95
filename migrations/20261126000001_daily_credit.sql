-- Credit earned per UTC day by each account and team: the history behind the charts on
-- user and team pages. The credit sweep adds to these rows in the transaction that adds
-- the same grants to the totals, so a day's rows always sum to what the totals gained.
--
-- A team's day counts the credit its members earned while they were members, as its
-- total does.

create table account_daily_credit (
    account_id bigint not null references account (id) on delete cascade,
    day date not null,
    credit double precision not null check (credit >= 0),
    primary key (account_id, day)
);

create table team_daily_credit (
    team_id bigint not null references team (id) on delete cascade,
    day date not null,
    credit double precision not null check (credit >= 0),
    primary key (team_id, day)
);

-- Grants folded before this history existed, by the day they were granted. Their team is
-- the member's team now: which team they were in then was never recorded.
insert into account_daily_credit (account_id, day, credit)
select account_id, (granted_at at time zone 'UTC')::date, sum(credit)
from credit_grant where applied
group by 1, 2;

insert into team_daily_credit (team_id, day, credit)
select a.team_id, (g.granted_at at time zone 'UTC')::date, sum(g.credit)
from credit_grant g join account a on a.id = g.account_id
where g.applied and a.team_id is not null
group by 1, 2;
