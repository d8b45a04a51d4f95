;; Spins forever in its start function, which runs while the module is being instantiated,
;; before `_start` is even looked up.
(module
  (func $spin (loop $forever (br $forever)))
  (start $spin)
  (func (export "_start")))
