(* Sizes in KiB for the tests, as the library takes them (int64), with int64 arithmetic. *)

let mib = 1024L

let gib = 1_048_576L

let ( + ) = Int64.add

let ( - ) = Int64.sub

let ( * ) = Int64.mul

(* The service's default host-reserved memory (the slush fund). *)
let slush = 72L * mib
