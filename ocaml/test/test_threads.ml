(* The runtime lock is released while the library works: another OCaml thread runs while one
   thread is inside a long change_host_free_memory, between two of its callbacks. *)

open Squeeze

(* Xen's domid space holds about 32 000 domains; a host that full keeps the library busy
   between callbacks (building and checking the snapshot, one round of the policy) long
   enough for another thread to be scheduled. *)
let guests = 30_000

let second_thread_runs_between_callbacks () =
  let domains =
    DomainSet.of_list
      (List.init guests (fun i -> domain_make (i + 1) true 1000L 1000L 1000L 1000L 1000L 0L))
  in
  let host = make_host ~domains ~free_mem_kib:1000L in
  (* [entered] counts callbacks begun, [inside] those not yet finished. Both change only in
     OCaml code of the calling thread, so another thread that holds the runtime lock sees
     them stable. *)
  let entered = Atomic.make 0 and inside = Atomic.make 0 in
  let counted f x =
    Atomic.incr entered ;
    Atomic.incr inside ;
    Fun.protect ~finally:(fun () -> Atomic.decr inside) (fun () -> f x)
  in
  let t = ref 0. in
  let io =
    {
      verbose= false
    ; make_host= counted (fun () -> ("", host))
    ; domain_setmaxmem= (fun d k -> counted (fun () -> ignore (d, k)) ())
    ; execute_action= counted ignore
    ; wait= counted (fun s -> t := !t +. s)
    ; gettimeofday= counted (fun () -> !t)
    ; target_host_free_mem_kib= 1000L
    ; free_memory_tolerance_kib= 0L
    }
  in
  (* The second thread notes the callback count whenever it finds the caller outside every
     callback. A count strictly between 0 and the final total means it ran while the caller
     was between two callbacks, that is inside the library, which is only possible if the
     stubs released the runtime lock. *)
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
     and 1000 KiB free it succeeds after one round: two snapshots and one maxmem per guest. *)
  change_host_free_memory io 1000L (fun free -> free >= 1000L) ;
  let total = Atomic.get entered in
  Atomic.set stop true ;
  Thread.join watcher ;
  Check.is_true ~what:"the library called back once per guest at least" (total > guests) ;
  let between = List.filter (fun e -> e < total) !seen in
  Check.is_true
    ~what:
      (Printf.sprintf "the second thread ran between callbacks (seen at counts %s of %d)"
         (Check.ints (List.rev !seen)) total)
    (between <> [])

let () =
  Check.run "threads"
    [ ( "a second thread keeps running while change_host_free_memory is in the library"
      , second_thread_runs_between_callbacks ) ]
