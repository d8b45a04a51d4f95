;; Counts to a billion, then prints the count and a random number: a task long enough to
;; be interrupted (about a second of work), deterministic in its output and fuel.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\00\04\00\00\10\00\00\00")
  (func (export "_start")
    (local $i i64)
    (loop $count
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $count (i64.lt_u (local.get $i) (i64.const 1000000000))))
    (i64.store (i32.const 1024) (local.get $i))
    (drop (call $random_get (i32.const 1032) (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
