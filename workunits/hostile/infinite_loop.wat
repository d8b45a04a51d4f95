;; Spins forever: stopped by the fuel limit, or by the wall-clock limit when fuel is ample.
(module
  (func (export "_start")
    (loop $forever (br $forever))))
