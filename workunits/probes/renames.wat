;; Keeps its fraction done the way careful modules keep any file: it writes `progress.tmp`
;; in its scratch directory and renames it over `progress`, 2,000 times, as fast as it can,
;; then prints "renamed" and exits 0. The host reads `progress` and measures the scratch
;; directory while modules run: that must never make a module's own file operations fail
;; (Windows refuses to rename over a file that another handle holds open). A failed rename
;; exits with its WASI errno; a failed open, write or close exits with 101, 102 or 103.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_rename"
    (func $path_rename (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "progress.tmp")
  ;; The fraction written: "0.5\n" (the same every time; what matters is the renaming).
  (data (i32.const 16) "0.5\n")
  ;; iovec for the fraction: 4 bytes at 16.
  (data (i32.const 32) "\10\00\00\00\04\00\00\00")
  ;; iovec for standard output: 8 bytes at 64.
  (data (i32.const 40) "\40\00\00\00\08\00\00\00")
  (data (i32.const 64) "renamed\n")
  ;; Exits with `status` when `errno` is not 0.
  (func $check (param $errno i32) (param $status i32)
    (if (local.get $errno) (then (call $proc_exit (local.get $status)))))
  (func (export "_start")
    (local $left i32)
    (local $errno i32)
    (local.set $left (i32.const 2000))
    (loop $again
      ;; Preopen 4 is the scratch directory. oflags 9 = O_CREAT | O_TRUNC; rights: fd_write
      ;; (1 << 6). The new descriptor lands at 48.
      (call $check
        (call $path_open (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 12)
          (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 48))
        (i32.const 101))
      (call $check
        (call $fd_write (i32.load (i32.const 48)) (i32.const 32) (i32.const 1) (i32.const 56))
        (i32.const 102))
      (call $check (call $fd_close (i32.load (i32.const 48))) (i32.const 103))
      ;; `progress.tmp` (12 bytes at 0) over `progress` (its first 8 bytes).
      (local.set $errno
        (call $path_rename (i32.const 4) (i32.const 0) (i32.const 12) (i32.const 4) (i32.const 0)
          (i32.const 8)))
      (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
      (local.set $left (i32.sub (local.get $left) (i32.const 1)))
      (br_if $again (local.get $left)))
    (call $check
      (call $fd_write (i32.const 1) (i32.const 40) (i32.const 1) (i32.const 56))
      (i32.const 102))))
