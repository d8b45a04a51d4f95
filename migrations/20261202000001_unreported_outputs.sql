-- Follows 20261201000002: what it left out about outputs stored before the upload log.

-- A blob that no app, work unit or publisher's file list names came from an upload, which
-- no replica may reference any more: that is an output too, never to be served, and for the
-- sweep to delete. So is a file a publisher stored before 20261201000002 and has not used
-- in a work unit yet: since then the server tells that publisher it is missing, and the
-- publish command uploads it again.
update blob b set origin = 'output'
where b.origin = 'published'
  and not exists (select 1 from app_version v where v.module_sha256 = b.sha256)
  and not exists (select 1 from app a where a.validator_module_sha256 = b.sha256)
  and not exists (select 1 from work_unit w where w.stdin_sha256 = b.sha256)
  and not exists (select 1 from work_unit_file f where f.sha256 = b.sha256)
  and not exists (select 1 from publisher_file p where p.sha256 = b.sha256);

-- The sweep asks whether any replica holds an output unreported.
create index replica_uploaded_sha256 on replica (uploaded_sha256) where uploaded_sha256 is not null;

-- An output uploaded before the log existed may be held by no replica.
alter table output_upload alter column replica_id drop not null;
drop index output_upload_sha256;
create index output_upload_replica_id on output_upload (replica_id, sha256);

-- Every unreported output stored before the log existed, for the sweep to decide about.
insert into output_upload (replica_id, sha256, check_after)
select (select r.id from replica r where r.uploaded_sha256 = b.sha256 order by r.id limit 1), b.sha256, now()
from blob b
where b.origin = 'output'
  and not exists (select 1 from replica r where r.output_sha256 = b.sha256)
  and not exists (select 1 from output_upload u where u.sha256 = b.sha256);
