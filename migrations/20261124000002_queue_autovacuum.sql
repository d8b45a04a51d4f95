-- The replica queue and the work units churn constantly: every claim, report and
-- validation updates rows, and the scheduler's claim walks the queue index, so dead
-- entries at its head slow every request. Vacuum and analyze them after 2% of their rows
-- change rather than the default 20%.
alter table replica set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
alter table work_unit set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
alter table credit_grant set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
