;; Reports half its work done through the `progress` file in its scratch directory, then
;; works forever in a loop that calls a function: the client must see its fraction done and
;; its fuel growing while it runs, and stop it on request.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "progress")
  (data (i32.const 16) "0.5\n")
  ;; The iovec: 4 bytes at offset 16.
  (data (i32.const 32) "\10\00\00\00\04\00\00\00")
  (global $work (mut i64) (i64.const 0))
  (func $step
    (global.set $work (i64.add (global.get $work) (i64.const 1))))
  (func (export "_start")
    ;; Preopens: 3 is /input, 4 is /scratch. Create and truncate `progress`, with the
    ;; right to write (1 << 6); the new descriptor lands at offset 48.
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 8)
                         (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 48))
      (then unreachable))
    (drop (call $fd_write (i32.load (i32.const 48)) (i32.const 32) (i32.const 1) (i32.const 56)))
    (drop (call $fd_close (i32.load (i32.const 48))))
    (loop $forever
      (call $step)
      (br $forever))))
