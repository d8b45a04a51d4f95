-- The operator's commands (`wasmgrid-server token|host|account|status`). A revoked
-- publisher token stays on record and stops working. A banned host, or any host of a
-- banned account, gets no work and has its pending results ignored; unbanning clears the
-- mark, and credit revoked during the ban stays revoked (it is in the ledger).
alter table publisher_token add column revoked_at timestamptz;
alter table host add column banned_at timestamptz, add column ban_reason text;
alter table account add column banned_at timestamptz, add column ban_reason text;
