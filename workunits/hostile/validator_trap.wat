;; A validator that executes `unreachable` before reading either output: the server must
;; count the comparison as a validator failure ("not equivalent") and tell the publisher,
;; not crash, hang or take the trap for a verdict.
(module
  (func (export "_start")
    unreachable))
