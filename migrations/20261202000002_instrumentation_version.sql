-- The version of the client's instrumentation pass each result ran through: outputs and fuel
-- are only comparable between results of one version. Results reported before the pass
-- existed ran under wasmtime's own determinism settings, version 0.
alter table replica add column instrumentation_version integer not null default 0;

-- A success of another version than the results that reached the quorum: it was never
-- compared, so it is neither valid nor invalid, and earns nothing.
alter type validate_state add value 'incomparable';
