;; Grows a function table without end.
(module
  (table 1 funcref)
  (func (export "_start")
    (loop $grow
      (drop (table.grow (ref.null func) (i32.const 65536)))
      (br $grow))))
