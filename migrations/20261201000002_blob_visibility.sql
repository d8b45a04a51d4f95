-- Who may see a blob, and when an uploaded output may be deleted.
--
-- A blob is published (a module, an input, a validator module: what publishers store) or
-- an output that a volunteer uploaded. Published blobs are served to anyone who knows their
-- hash, as volunteers need; an output is served only once a replica has reported it, so an
-- upload that is never reported is no free file hosting. Bytes a publisher stores that
-- exist already as an output become published.
alter table blob add column origin text not null default 'published'
    check (origin in ('published', 'output'));
update blob b set origin = 'output'
where not exists (select 1 from app_version v where v.module_sha256 = b.sha256)
  and not exists (select 1 from app a where a.validator_module_sha256 = b.sha256)
  and not exists (select 1 from work_unit w where w.stdin_sha256 = b.sha256)
  and not exists (select 1 from work_unit_file f where f.sha256 = b.sha256)
  and exists (select 1 from replica r where r.output_sha256 = b.sha256 or r.uploaded_sha256 = b.sha256);

-- Serving an output, and deciding whether one may be deleted, ask whether any replica
-- reported it.
create index replica_output_sha256 on replica (output_sha256) where output_sha256 is not null;

-- Every output upload, until the sweep has decided what becomes of its blob: kept while
-- its replica may still report it or once a replica has reported it, deleted otherwise
-- (replaced by a newer upload, or its replica ended without reporting it). `check_after`
-- is when the sweep looks next. No foreign key to the blob: the sweep deletes the blob and
-- these rows in one transaction.
create table output_upload (
    id bigint generated always as identity primary key,
    replica_id bigint not null references replica (id),
    sha256 text not null,
    check_after timestamptz not null,
    created_at timestamptz not null default now()
);
create index output_upload_check_after on output_upload (check_after);
create index output_upload_sha256 on output_upload (sha256);

-- The files each publisher stored, so that a publisher learns only about its own files
-- whether the server has them (or about modules, which are public), and names only its
-- own files as inputs.
create table publisher_file (
    publisher_id bigint not null references publisher (id),
    sha256 text not null references blob (sha256),
    created_at timestamptz not null default now(),
    primary key (publisher_id, sha256)
);
insert into publisher_file (publisher_id, sha256)
select a.publisher_id, w.stdin_sha256 from work_unit w join batch b on b.id = w.batch_id join app a on a.id = b.app_id
where w.stdin_sha256 is not null
union
select a.publisher_id, f.sha256 from work_unit_file f join work_unit w on w.id = f.work_unit_id
     join batch b on b.id = w.batch_id join app a on a.id = b.app_id
union
select a.publisher_id, a.validator_module_sha256 from app a where a.validator_module_sha256 is not null;
create index app_version_module_sha256 on app_version (module_sha256);

-- A batch's name shows on the public status page only if its publisher says so; otherwise
-- it is "batch N" there.
alter table batch add column public boolean not null default false;
