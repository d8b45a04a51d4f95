;; Creates a file in its scratch directory (preopen fd 4) and appends 64 KiB blocks to it
;; forever.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "\00\04\00\00\00\00\01\00")
  (data (i32.const 32) "filler")
  (func (export "_start")
    (local $errno i32)
    ;; oflags 1 = O_CREAT; rights: fd_write (1 << 6).
    (local.set $errno (call $path_open (i32.const 4) (i32.const 0) (i32.const 32) (i32.const 6)
      (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 48)))
    (if (local.get $errno) (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno)))))
    (loop $again
      (drop (call $fd_write (i32.load (i32.const 48)) (i32.const 0) (i32.const 1) (i32.const 16)))
      (br $again))))
