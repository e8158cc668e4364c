(* The runtime lock is released while the library works: another OCaml thread runs while one
   thread is inside change_host_free_memory, between two of its callbacks. *)

open Squeeze

(* Xen's domid space holds about 32 000 domains; a host that full keeps the library busy
   between callbacks (building and checking each snapshot, one round of the policy). *)
let guests = 30_000

let second_thread_runs_between_callbacks () =
  let domains =
    DomainSet.of_list
      (List.init guests (fun i -> domain_make (i + 1) true 1000L 1000L 1000L 1000L 1000L 0L))
  in
  let host = make_host ~domains ~free_mem_kib:1000L in
  let t = ref 0. in
  let io =
    {
      verbose= false
    ; make_host= (fun () -> ("", host))
    ; domain_setmaxmem= (fun _ _ -> ())
    ; execute_action= ignore
    ; wait= (fun s -> t := !t +. s)
    ; gettimeofday= (fun () -> !t)
    ; target_host_free_mem_kib= 1000L
    ; free_memory_tolerance_kib= 0L
    }
  in
  (* [entered] counts callbacks begun, [inside] those not yet finished. The observer brackets
     every piece of OCaml code the calling thread runs during the call, so while [inside] is 0
     between the first and the last callback, that thread is in C or in the library. Both
     counters change only in the calling thread's OCaml code, so another thread that holds
     the runtime lock sees them stable. *)
  let entered = Atomic.make 0 and inside = Atomic.make 0 in
  (callback_observer :=
     fun starting ->
       if starting then (
         Atomic.incr entered ;
         Atomic.incr inside
       ) else Atomic.decr inside) ;
  (* The second thread notes the callback count whenever it finds the caller outside every
     callback. A count strictly between 0 and the final total means it ran while the caller
     was inside the library: without the runtime lock released there, the second thread could
     only have run when the caller paused in OCaml code, that is inside a callback. *)
  let stop = Atomic.make false and spins = Atomic.make 0 in
  let seen = ref [] in
  let watcher =
    Thread.create
      (fun () ->
        while not (Atomic.get stop) do
          ( if Atomic.get inside = 0 then
              let e = Atomic.get entered in
              if e > 0 && not (List.mem e !seen) then seen := e :: !seen ) ;
          Atomic.incr spins ;
          Thread.yield ()
        done)
      ()
  in
  while Atomic.get spins = 0 do
    Thread.yield ()
  done ;
  (* Required = the slush: the library always takes a fresh look, and with every range empty
     and 1000 KiB free it succeeds after one round: two snapshots and one maxmem per guest.
     The OS may keep the second thread off the CPU through one call on a busy machine, so
     calls repeat (up to 20) until it has been seen inside one; a sighting at count e inside
     the call whose callbacks are numbered start+1 .. finish needs start < e < finish. *)
  let inside_a_call calls e = List.exists (fun (start, finish) -> start < e && e < finish) calls in
  let rec calls_until_seen calls =
    if List.length calls = 20 || List.exists (inside_a_call calls) !seen then calls
    else
      let start = Atomic.get entered in
      change_host_free_memory io 1000L (fun free -> free >= 1000L) ;
      let finish = Atomic.get entered in
      Check.is_true ~what:"the library called back once per guest at least"
        (finish - start > guests) ;
      calls_until_seen ((start, finish) :: calls)
  in
  let calls =
    Fun.protect ~finally:(fun () -> callback_observer := ignore) (fun () -> calls_until_seen [])
  in
  Atomic.set stop true ;
  Thread.join watcher ;
  Check.is_true
    ~what:
      (Printf.sprintf "the second thread ran inside the library in one of %d calls (seen at %s)"
         (List.length calls) (Check.ints (List.rev !seen)))
    (List.exists (inside_a_call calls) !seen)

(* Two threads run different failing requests at the same time, twenty times each: each gets
   its own error with its own details (the library keeps the last error per thread, and the
   stubs read it on the thread that made the call). *)
let concurrent_calls_keep_their_own_errors () =
  let too_much () =
    (* Both guests at dynamic-min free 500 + 500 KiB; 1500 is asked for. *)
    let sim =
      Sim.create ~free_kib:0L
        [ (domain_make 0 true 1000L 1500L 2000L 1500L 1500L 0L, 100L, Sim.Ideal)
        ; (domain_make 1 true 2000L 2500L 3000L 2500L 2500L 0L, 100L, Sim.Ideal) ]
    in
    match change_host_free_memory (Sim.io ~target_host_free_mem_kib:1500L sim) 1500L (fun f -> f >= 1500L) with
    | () -> "success"
    | exception Cannot_free_this_much_memory (r, f) -> Printf.sprintf "cannot free (%Ld, %Ld)" r f
    | exception e -> Printexc.to_string e
  in
  let stuck () =
    (* Guest 7 never moves; the 1000 KiB needs it. *)
    let sim =
      Sim.create ~free_kib:0L
        [ (domain_make 3 true 1000L 1500L 2000L 1500L 1500L 0L, 100L, Sim.Ideal)
        ; (domain_make 7 true 2000L 2500L 3000L 2500L 2500L 0L, 100L, Sim.Stuck) ]
    in
    match change_host_free_memory (Sim.io ~target_host_free_mem_kib:1000L sim) 1000L (fun f -> f >= 1000L) with
    | () -> "success"
    | exception Domains_refused_to_cooperate l -> "refused " ^ Check.ints l
    | exception e -> Printexc.to_string e
  in
  let run f = List.init 20 (fun _ -> f ()) in
  let results = ref [] in
  let other = Thread.create (fun () -> results := run stuck) () in
  let mine = run too_much in
  Thread.join other ;
  List.iter (Check.equal ~what:"first thread" Fun.id "cannot free (1500, 1000)") mine ;
  Check.int ~what:"second thread's results" 20 (List.length !results) ;
  List.iter (Check.equal ~what:"second thread" Fun.id "refused [7]") !results

let () =
  Check.run "threads"
    [ ( "a second thread keeps running while change_host_free_memory is in the library"
      , second_thread_runs_between_callbacks )
    ; ("concurrent calls from two threads each get their own error", concurrent_calls_keep_their_own_errors) ]
