-- The version of the client's instrumentation pass each result ran through: outputs and fuel
-- are only comparable between results of one version. Results reported before the pass
-- existed ran under wasmtime's own determinism settings, version 0.
alter table replica add column if not exists instrumentation_version integer not null default 0;

-- A success of another version than the results that reached the quorum: it was never
-- compared, so it is neither valid nor invalid, and earns nothing. (An enum value cannot be
-- dropped, so a database taken back to before this migration still has it.)
alter type validate_state add value if not exists 'incomparable';
