;; Relaxed SIMD is defined to give different results on different CPUs (a fused or unfused
;; multiply-add here): refused at publish, and by the client, with the reason.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (v128.store (i32.const 0)
      (f32x4.relaxed_madd
        (v128.const f32x4 1.0000001 3.3333333 1e30 -0.1)
        (v128.const f32x4 1.0000001 3.0000001 1e10 0.3)
        (v128.const f32x4 -1.0000002 -10.0 -1e38 0.03)))))
