;; Nests 24 directories with 255-character names in its scratch directory, working from
;; directory handles, so the deepest one lies beyond the host's path length limit (4096
;; bytes): a host that measures the scratch directory by path cannot see into it. The
;; scratch quota must then count as broken, not as empty.
(module
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $path_create_directory (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
  (func (export "_start")
    (local $dir i32)
    (local $depth i32)
    (local $errno i32)
    ;; The scratch directory's preopen.
    (local.set $dir (i32.const 4))
    (loop $deeper
      (local.set $errno (call $path_create_directory (local.get $dir) (i32.const 256) (i32.const 255)))
      (if (local.get $errno) (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno)))))
      ;; oflags 2 = O_DIRECTORY; rights: path_create_directory (1 << 9), path_open (1 << 13).
      (local.set $errno (call $path_open (local.get $dir) (i32.const 0) (i32.const 256) (i32.const 255)
        (i32.const 2) (i64.const 8704) (i64.const 8704) (i32.const 0) (i32.const 0)))
      (if (local.get $errno) (then (call $proc_exit (i32.add (i32.const 200) (local.get $errno)))))
      (local.set $dir (i32.load (i32.const 0)))
      (local.set $depth (i32.add (local.get $depth) (i32.const 1)))
      (br_if $deeper (i32.lt_u (local.get $depth) (i32.const 24))))))
