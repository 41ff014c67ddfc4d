;; `table`: a guest that grows its table without end, 4096 elements at a
;; time, to make the host hold ever more. Refused (table.grow returns -1),
;; it traps; were it never refused, it would spin until its deadline.
(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))
  ))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $outparam))
  (core module $m
    (table $t 1 funcref)
    (func (export "handle") (param i32 i32)
      (loop $grow
        (br_if $grow
          (i32.ne
            (table.grow $t (ref.null func) (i32.const 4096))
            (i32.const -1))))
      unreachable)
  )
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $request)) (param "response-out" (own $outparam))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler))
)
