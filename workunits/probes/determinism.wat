;; Writes to standard output everything a host could make differ between machines: NaN bit
;; patterns (from arithmetic on a signalling NaN with a payload, 0/0, sqrt(-1), and the same in
;; SIMD lanes), a long floating-point accumulation, 32 random bytes and the wall clock. Under
;; the sandbox every byte must be the same on every run and every machine.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: buffer at 1024, 128 bytes.
  (data (i32.const 0) "\00\04\00\00\80\00\00\00")
  (func (export "_start")
    (local $i i32)
    (local $sum f64)
    ;; NaNs: a signalling NaN with a payload, plus one; 0/0; sqrt(-1); an f32 NaN product.
    (f64.store (i32.const 1024)
      (f64.add (f64.reinterpret_i64 (i64.const 0x7FF4000000000001)) (f64.const 1)))
    (f64.store (i32.const 1032) (f64.div (f64.const 0) (f64.const 0)))
    (f64.store (i32.const 1040) (f64.sqrt (f64.const -1)))
    (f32.store (i32.const 1048)
      (f32.mul (f32.reinterpret_i32 (i32.const 0xFFA00001)) (f32.const 2)))
    ;; SIMD lanes: a multiply-add that rounds twice, and NaNs from 0/0, inf-inf and a
    ;; signalling NaN with a payload.
    (v128.store (i32.const 1056)
      (f32x4.add
        (f32x4.mul
          (v128.const f32x4 1.0000001 0 inf -0.1)
          (v128.const f32x4 1.0000001 0 1 0.3))
        (v128.const i32x4 0xBF800002 0x7FA00001 0xFF800000 0x3CF5C28F)))
    ;; A long accumulation: rounding happens the same everywhere, or nowhere.
    (local.set $i (i32.const 0))
    (loop $accumulate
      (local.set $sum (f64.add (local.get $sum)
        (f64.div (f64.const 1) (f64.convert_i32_u (i32.add (local.get $i) (i32.const 1))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $accumulate (i32.lt_u (local.get $i) (i32.const 100000))))
    (f64.store (i32.const 1072) (local.get $sum))
    ;; Randomness, seeded by the work unit.
    (drop (call $random_get (i32.const 1080) (i32.const 32)))
    ;; The wall clock.
    (drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 1112)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
