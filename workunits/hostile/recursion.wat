;; Calls itself with no base case: the Wasm stack limit stops it, not the host.
(module
  (func $dive (param i64) (result i64)
    (i64.add (call $dive (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
  (func (export "_start")
    (drop (call $dive (i64.const 0)))))
