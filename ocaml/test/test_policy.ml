(* The policy of a squeezer kept across calls: the adaptive one splits a request by balloon
   speed and scores a driver that does not move; squeezed's classic one, through the same
   interface, does neither. Sizes in KiB. *)

open Squeeze

let mib = 1024L

let gib = 1_048_576L

let ( * ) = Int64.mul

(* Two guests of 1..3 GiB at 3 GiB with nothing free, ballooning at 100 MiB/s and 4 MiB/s (or
   not at all). *)
let two_guests slow =
  let guest domid = domain_make domid true gib (3L * gib) (3L * gib) (3L * gib) (3L * gib) 4L in
  Sim.create ~time_limit_s:1000. ~free_kib:0L
    [(guest 1, 100L * mib, Sim.Ideal); (guest 2, 4L * mib, slow)]

(* Seconds of simulated time to free 2 GiB. squeezed asks each guest for the same share of its
   range (1 GiB), so the 4 MiB/s guest takes 256 s; the lower bound is 2 GiB at 104 MiB/s,
   19.7 s. *)
let time_to_free_2_gib policy =
  let sim = two_guests Sim.Ideal in
  let io = Sim.io ~target_host_free_mem_kib:0L sim in
  let s = Squeezer.create ~policy () in
  Squeezer.change_host_free_memory s io (2L * gib) (fun free -> free >= 2L * gib) ;
  Check.is_true ~what:"2 GiB free" (sim.Sim.free_kib >= 2L * gib) ;
  Sim.now sim

let freeing_follows_balloon_speed () =
  let classic = time_to_free_2_gib Squeezer.Classic in
  let adaptive = time_to_free_2_gib Squeezer.Adaptive in
  Check.is_true ~what:(Printf.sprintf "classic took %.1f s, expected about 256" classic)
    (classic > 200.) ;
  Check.is_true
    ~what:(Printf.sprintf "adaptive took %.1f s, expected under 1.2 x 19.7 s + 1 s" adaptive)
    (adaptive < 25.)

let a_stuck_guest_is_scored () =
  let sim = two_guests Sim.Stuck in
  let io = Sim.io ~target_host_free_mem_kib:0L sim in
  let s = Squeezer.create ~policy:Squeezer.Adaptive () in
  Check.is_true ~what:"policy" (Squeezer.policy s = Squeezer.Adaptive) ;
  Check.is_true ~what:"no history" (Squeezer.cooperation s 2 = None) ;
  (* 3 GiB: the working guest can give 2 GiB, so the stuck one is needed. *)
  (match Squeezer.change_host_free_memory s io (3L * gib) (fun free -> free >= 3L * gib) with
  | () -> Check.fail "3 GiB freed with a stuck guest"
  | exception Domains_refused_to_cooperate [2] -> ()) ;
  (match Squeezer.cooperation s 2 with
  | Some {Squeezer.score_s; concern= Some Squeezer.Not_moving; _} when score_s > 0. -> ()
  | _ -> Check.fail "the stuck guest has no score") ;
  (match Squeezer.cooperation s 1 with
  | Some {Squeezer.concern= None; uncooperative= false; _} -> ()
  | _ -> Check.fail "the working guest is held to account") ;
  Check.is_true ~what:"an unknown domain" (Squeezer.cooperation s 99 = None) ;
  (* What the working guest covers alone is then freed, with what was learnt. *)
  Squeezer.change_host_free_memory s io gib (fun free -> free >= gib) ;
  Check.is_true ~what:"1 GiB free" (sim.Sim.free_kib >= gib)

let () =
  Check.run "policy"
    [
      ("adaptive frees at the speed of both guests, classic at the slowest", freeing_follows_balloon_speed)
    ; ("the adaptive squeezer names and scores a stuck guest", a_stuck_guest_is_scored)
    ]
