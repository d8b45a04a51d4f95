;; Tries to open files outside its directories: `../` from the scratch directory, then an
;; absolute path. If either opens, it copies the file to standard output and exits 0 (a
;; sandbox escape); otherwise it exits with the last WASI errno as its status.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "../../../../../../../../etc/passwd")
  (data (i32.const 200) "/etc/passwd")
  ;; iovec at 0: buffer at 1024, 4096 bytes.
  (data (i32.const 0) "\00\04\00\00\00\10\00\00")
  (func $try_open (param $path i32) (param $length i32) (result i32)
    ;; Scratch directory (fd 4); rights: fd_read (1 << 1).
    (call $path_open (i32.const 4) (i32.const 1) (local.get $path) (local.get $length)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 48)))
  (func $leak
    (drop (call $fd_read (i32.load (i32.const 48)) (i32.const 0) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 4) (i32.load (i32.const 16)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
    (call $proc_exit (i32.const 0)))
  (func (export "_start")
    (local $errno i32)
    (local.set $errno (call $try_open (i32.const 100) (i32.const 34)))
    (if (i32.eqz (local.get $errno)) (then (call $leak)))
    (local.set $errno (call $try_open (i32.const 200) (i32.const 11)))
    (if (i32.eqz (local.get $errno)) (then (call $leak)))
    (call $proc_exit (local.get $errno))))
