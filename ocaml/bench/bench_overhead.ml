(* What a call through the OCaml binding costs: the stub, the library and the callbacks into
   OCaml, each of which takes the runtime lock back and releases it again.

   Prints one line per measurement: a name and nanoseconds per call (best of five runs). *)

open Squeeze

let balanced_io n =
  (* Every guest at target and every range empty: nothing to do, so the library runs one round
     (two snapshots, a maxmem per guest) and succeeds. *)
  let host =
    make_host ~free_mem_kib:1000L
      ~domains:
        (DomainSet.of_list
           (List.init n (fun i -> domain_make (i + 1) true 1000L 1000L 1000L 1000L 1000L 0L)))
  in
  {
    verbose= false
  ; make_host= (fun () -> ("", host))
  ; domain_setmaxmem= (fun _ _ -> ())
  ; execute_action= ignore
  ; wait= ignore
  ; gettimeofday= (fun () -> 0.)
  ; target_host_free_mem_kib= 1000L
  ; free_memory_tolerance_kib= 0L
  }

let best_ns_per_call ~calls f =
  let run () =
    let t0 = Unix.gettimeofday () in
    for _ = 1 to calls do
      f ()
    done ;
    (Unix.gettimeofday () -. t0) *. 1e9 /. float_of_int calls
  in
  List.fold_left min infinity (List.init 5 (fun _ -> run ()))

let () =
  let io10 = balanced_io 10 and io1000 = balanced_io 1000 in
  let unbalanced10 =
    best_ns_per_call ~calls:20_000 (fun () -> ignore (is_host_memory_unbalanced io10))
  in
  let change10 =
    best_ns_per_call ~calls:20_000 (fun () -> change_host_free_memory io10 1000L (fun _ -> true))
  in
  let change1000 =
    best_ns_per_call ~calls:500 (fun () -> change_host_free_memory io1000 1000L (fun _ -> true))
  in
  Printf.printf "is_host_memory_unbalanced_10 %.0f\n" unbalanced10 ;
  Printf.printf "change_host_free_memory_10 %.0f\n" change10 ;
  Printf.printf "change_host_free_memory_1000 %.0f\n" change1000 ;
  (* 990 more guests cost 990 more maxmem callbacks and two snapshots 990 domains larger. *)
  Printf.printf "per_extra_guest %.0f\n" ((change1000 -. change10) /. 990.)
