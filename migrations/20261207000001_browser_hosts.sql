-- Hosts that are browser tabs (the /contribute page) beside the native client: their records
-- say so, and they get shorter deadlines, since closing a tab abandons its work at once.
alter table host add column if not exists kind text not null default 'native'
    check (kind in ('native', 'browser'));
