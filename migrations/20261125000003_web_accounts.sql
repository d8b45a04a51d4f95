-- Accounts that sign in on the web site: an optional email, a password (an Argon2id hash
-- in PHC form). Accounts made by `wasmgrid attach` have neither until their owner signs up.
alter table account add column email text;
alter table account add column password_hash text;
-- Names and emails people sign in with are unique, case aside.
create unique index account_login_name on account (lower(name)) where password_hash is not null;
create unique index account_email on account (lower(email)) where email is not null;

-- Signed-in browsers. The cookie holds a random secret; only its SHA-256 is kept.
create table web_session (
    secret_hash bytea primary key,
    account_id bigint not null references account (id),
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index web_session_account_id on web_session (account_id);
create index web_session_expires_at on web_session (expires_at);

-- Sign-in attempts that have not succeeded (and sign-ups), by what was tried (a name or
-- email, and the client's address), to slow down guessing. An attempt is recorded before
-- its password is checked, so parallel guesses count too, and removed if it succeeds.
create table login_attempt (
    id bigint generated always as identity primary key,
    key text not null,
    attempted_at timestamptz not null default now()
);
create index login_attempt_key on login_attempt (key, attempted_at);
create index login_attempt_attempted_at on login_attempt (attempted_at);
