-- The operator's commands (`wasmgrid-server token|host|account|status`). A revoked
-- publisher token stays on record and stops working. A banned host, or any host of a
-- banned account, gets no work and has its pending results ignored; unbanning clears the
-- mark, and credit revoked during the ban stays revoked (it is in the ledger).
-- (Rerunnable, like the migrations before it that tests apply again to an older schema.)
alter table publisher_token add column if not exists revoked_at timestamptz;
alter table host add column if not exists banned_at timestamptz, add column if not exists ban_reason text;
alter table account add column if not exists banned_at timestamptz, add column if not exists ban_reason text;
-- Every sweep looks for banned hosts: few, so these stay tiny and the look is cheap.
create index if not exists host_banned on host (id) where banned_at is not null;
create index if not exists account_banned on account (id) where banned_at is not null;
