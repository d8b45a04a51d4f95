;; Asks the host for 1 MiB of random bytes, forever: each call costs the host a
;; millisecond or more but the module only a few units of fuel, so neither the fuel limit nor
;; fuel-driven checks would stop it in time; the checks on every return from the host do.
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 17)
  (func (export "_start")
    (loop $again
      (drop (call $random_get (i32.const 0) (i32.const 1048576)))
      (br $again))))
