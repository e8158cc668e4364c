(* Squeeze_memory's background balancer, progress and cancellation of reservations. Sizes in
   KiB; the host has 8 GiB, of which Xen keeps 256 MiB and domain 0 holds 1 GiB, so 6.75 GiB
   are free before any guest. *)

open Squeeze_memory
open Sizes

let setup ?balance_interval_s ?(policy = Classic) () =
  let host = Fake_host.create ~total_kib:(8L * gib) ~xen_kib:(256L * mib) ~dom0_kib:gib () in
  let lock_path = Filename.temp_file "squeeze-service" ".lock" in
  let boot_time_record_path = Filename.temp_file "squeeze-service" ".boot" in
  (host, create_fake ~lock_path ~boot_time_record_path ~policy ?balance_interval_s host)

(* A booted guest of [kib] that may be anything in [min..max]. *)
let guest host ?rate_kib_per_s ~min ~max kib =
  let d =
    Fake_host.create_domain host ?rate_kib_per_s ~target_kib:kib ~dynamic_min_kib:min
      ~dynamic_max_kib:max ()
  in
  Fake_host.build_domain host d kib ;
  Fake_host.unpause host d ;
  Fake_host.advance host 2.0 ;
  d

let contains s sub =
  let n = String.length sub in
  let rec at i =
    Stdlib.(i + n <= String.length s) && (String.sub s i n = sub || at (Stdlib.( + ) i 1))
  in
  at 0

let the_balancer_hands_free_memory_back () =
  let host, s = setup ~balance_interval_s:0.05 () in
  (* At 1 GiB of its 1..4 GiB: 5.75 GiB free, far above the slush. *)
  let d = guest host ~min:gib ~max:(4L * gib) gib in
  start_balancer s ;
  start_balancer s ;
  (* Polled, not timed: the balancer gets up to a minute of wall time. *)
  let deadline = Unix.gettimeofday () +. 60. in
  (* Its dynamic-max, within the 4 KiB a balloon driver may stop short of its target. *)
  let grown () = (Fake_host.domain host d).Fake_host.tot_kib >= (4L * gib) - 4L in
  while (not (grown ())) && Unix.gettimeofday () < deadline do
    Thread.delay 0.01
  done ;
  stop_balancer s ;
  stop_balancer s ;
  let holds = (Fake_host.domain host d).Fake_host.tot_kib in
  Check.is_true ~what:(Printf.sprintf "the guest grew to 4 GiB: %Ld KiB" holds) (grown ()) ;
  let diag = get_diagnostics s in
  Check.is_true ~what:"the diagnostics say it no longer runs"
    (contains diag "\"running\": false")

(* A 4 GiB guest (1..4 GiB) that balloons at 100 MiB/s leaves 2.75 GiB free: 4 GiB needs
   1.25 GiB + the 72 MiB slush freed, about 13 s of its ballooning. *)
let slow_guest_host () =
  let host, s = setup () in
  let d = guest host ~rate_kib_per_s:(100L * mib) ~min:gib ~max:(4L * gib) (4L * gib) in
  (host, s, d)

let needed = (4L * gib) + slush - ((2L * gib) + (768L * mib))

let progress_is_reported_until_the_memory_is_free () =
  let _host, s, _d = slow_guest_host () in
  let reports = ref [] in
  let id =
    reserve_memory_with s ~progress:(fun p -> reports := p :: !reports) "xenopsd" (4L * gib)
  in
  Check.int ~what:"id length" 36 (String.length id) ;
  let reports = List.rev !reports in
  Check.is_true ~what:(Printf.sprintf "%d reports, several" (List.length reports))
    (List.length reports >= 3) ;
  List.iter (fun p -> Check.int64 ~what:"needed" needed p.needed_kib) reports ;
  let freed = List.map (fun p -> p.freed_kib) reports in
  Check.is_true ~what:"freed never shrinks" (List.sort compare freed = freed) ;
  Check.is_true ~what:"something was freed by the last report"
    (List.nth freed (Stdlib.( - ) (List.length freed) 1) > 0L) ;
  Check.is_true ~what:"no estimate before anything was freed"
    ((List.hd reports).eta_s = None) ;
  Check.is_true ~what:"an estimate once something was freed"
    (List.exists (fun p -> p.eta_s <> None) reports)

let cancelling_stops_a_reservation () =
  let _host, s, _d = slow_guest_host () in
  let cancel = Cancel.create () in
  let reports = ref 0 in
  ( match
      reserve_memory_with s ~cancel
        ~progress:(fun _ -> incr reports ; if !reports = 2 then Cancel.request cancel)
        "xenopsd" (4L * gib)
    with
  | _ -> Check.fail "a cancelled reservation succeeded"
  | exception Cancelled -> () ) ;
  Check.int ~what:"reports before it stopped" 2 !reports ;
  Check.is_true ~what:"nothing reserved" (contains (get_diagnostics s) "\"sessions\": []") ;
  Check.is_true ~what:"nothing left waiting" (contains (get_diagnostics s) "\"pending\": []") ;
  (* A handle cancelled beforehand stops the next reservation at its first wait. *)
  ( match reserve_memory_range_with s ~cancel "xenopsd" (4L * gib) (4L * gib) with
  | _ -> Check.fail "a reservation with a cancelled handle succeeded"
  | exception Cancelled -> () ) ;
  (* Without it, the same reservation goes through. *)
  let _, got = reserve_memory_range_with s "xenopsd" (4L * gib) (4L * gib) in
  Check.int64 ~what:"reserved" (4L * gib) got

(* The 100 MiB/s guest needs about 13.5 s to free what 4 GiB takes. *)
let a_deadline_the_guests_cannot_meet_is_refused_early () =
  let host, s = setup ~policy:Adaptive () in
  let _d = guest host ~rate_kib_per_s:(100L * mib) ~min:gib ~max:(4L * gib) (4L * gib) in
  let waited = ref 0. in
  ( match
      reserve_memory_with s ~deadline:5.
        ~progress:(fun p -> waited := p.elapsed_s)
        "xenopsd" (4L * gib)
    with
  | _ -> Check.fail "a reservation the guest cannot serve in 5 s succeeded"
  | exception Deadline_exceeded msg ->
      Check.is_true ~what:("a message: " ^ msg) (String.length msg > 0) ) ;
  Check.is_true ~what:(Printf.sprintf "said so after %.1f s, before the 5 s passed" !waited)
    (!waited < 5.) ;
  Check.is_true ~what:"nothing reserved" (contains (get_diagnostics s) "\"sessions\": []") ;
  ( match reserve_memory_with s ~deadline:0. "xenopsd" gib with
  | _ -> Check.fail "a zero deadline was taken"
  | exception Invalid_argument _ -> () ) ;
  (* With time enough, the same reservation goes through. *)
  let id = reserve_memory_with s ~deadline:60. "xenopsd" (4L * gib) in
  Check.int ~what:"id length" 36 (String.length id)

let an_exception_in_progress_stops_and_comes_out () =
  let _host, s, _d = slow_guest_host () in
  ( match reserve_memory_with s ~progress:(fun _ -> raise Exit) "xenopsd" (4L * gib) with
  | _ -> Check.fail "the reservation went on"
  | exception Exit -> () ) ;
  Check.is_true ~what:"nothing reserved" (contains (get_diagnostics s) "\"sessions\": []")

let () =
  Check.run "service"
    [
      ( "the background balancer hands free memory back, and stops"
      , the_balancer_hands_free_memory_back )
    ; ( "progress is reported until the memory is free"
      , progress_is_reported_until_the_memory_is_free )
    ; ("cancelling stops a reservation and keeps nothing", cancelling_stops_a_reservation)
    ; ( "a deadline the guests cannot meet is refused early, and nothing reserved"
      , a_deadline_the_guests_cannot_meet_is_refused_early )
    ; ( "an exception in the progress closure stops the reservation and comes out"
      , an_exception_in_progress_stops_and_comes_out )
    ]
