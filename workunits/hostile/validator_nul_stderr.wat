;; A validator whose last line of standard error holds a NUL and a terminal escape, as
;; one that echoes a volunteer's output bytes would, then exits with 2 (neither verdict):
;; the server must store the failure without them (PostgreSQL refuses NUL, and the
;; publisher's terminal would obey the escape) and move the work unit on.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: "bad\00byte\1b[2J here\n" at 16, then a lone NUL: 19 bytes. The NUL
  ;; after the newline makes a last line that is blank only once made printable.
  (data (i32.const 0) "\10\00\00\00\13\00\00\00")
  (data (i32.const 16) "bad\00byte\1b[2J here\n\00")
  (func (export "_start")
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 2))))
