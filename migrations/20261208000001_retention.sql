-- Retention: a batch's inputs and outputs are deleted a set time after it ends (or as soon
-- as its publisher deletes it), and outputs that lost validation soon after. Rows stay, so
-- the batch, its work units and everyone's credit stay on record; the bytes go.
-- (Rerunnable, like the migrations before it.)

-- When a blob's bytes were deleted. Its row stays while rows of finished batches name it;
-- storing the same bytes again brings it back.
alter table blob add column if not exists deleted_at timestamptz;

-- When the batch ended: closed with no work unit active and none waiting for a recheck
-- (found by the retention sweep, and cleared if a recheck reopens it). Its files are kept
-- for the retention after this.
alter table batch add column if not exists ended_at timestamptz;
-- When its publisher asked for it to be deleted now.
alter table batch add column if not exists deleted_at timestamptz;
-- When its files were handed to the sweep below: from then on, none of its rows keeps a blob.
alter table batch add column if not exists purged_at timestamptz;
create index if not exists batch_not_purged on batch (id) where purged_at is null;
-- Whether a batch still waits for a recheck, asked of every ended batch at every sweep: few
-- work units wait at once, so this stays tiny.
create index if not exists work_unit_recheck_pending on work_unit (batch_id) where recheck = 'pending';

-- Blobs that may have lost their last reference: named by a purged batch, or the output of
-- a replica found invalid. The sweep deletes each whose bytes nothing live needs any more.
create table if not exists blob_release (
    sha256 text primary key references blob (sha256) on delete cascade,
    check_after timestamptz not null default now()
);
create index if not exists blob_release_due on blob_release (check_after);

-- Until when a blob is promised to a publisher that was told it is stored (and so will not
-- upload it again before naming it in work units).
alter table blob add column if not exists held_until timestamptz;

-- What the release sweep asks of each blob: which work units and replicas name it.
create index if not exists work_unit_stdin_sha256 on work_unit (stdin_sha256) where stdin_sha256 is not null;
create index if not exists work_unit_file_sha256 on work_unit_file (sha256);
