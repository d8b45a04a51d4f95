;; Tries to reach what a browser tab has besides WASI: its own import of `fetch`, which a
;; module in a tab would call to talk to the network with the page's cookies. A tab gives a
;; module WASI and nothing else, so it must end as a missing import, as in the native client.
(module
  (import "env" "fetch" (func $fetch (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "https://example.org/")
  (func (export "_start")
    (drop (call $fetch (i32.const 0) (i32.const 20)))))
