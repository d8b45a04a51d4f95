-- Team names are unique regardless of case, as account names are, so that "Crunchers" and
-- "crunchers" cannot be two teams on the leaderboard. Teams founded before this with names
-- that differ only in case keep their names, apart from the newer ones, which get their id
-- appended.
update team t set name = t.name || ' (' || t.id || ')'
where exists (select 1 from team older where lower(older.name) = lower(t.name) and older.id < t.id);

alter table team drop constraint team_name_key;
create unique index team_name_unique on team (lower(name));
