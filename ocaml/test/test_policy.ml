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

(* Two guests of 1..3 GiB at 1 GiB and 2 GiB free: balancing hands it out (all but the few
   KiB of the balance tolerance) in proportion to weight x range. Equal weights: 1 GiB each
   (squeezed's split); weights 1 and 3: 0.5 GiB and 1.5 GiB. Returns what each was given. *)
let given policy w1 w2 =
  let guest domid weight =
    {(domain_make domid true gib gib (3L * gib) gib (3L * gib) 4L) with weight}
  in
  let sim =
    Sim.create ~free_kib:(2L * gib)
      [(guest 1 w1, 100L * mib, Sim.Ideal); (guest 2 w2, 100L * mib, Sim.Ideal)]
  in
  let io = Sim.io ~target_host_free_mem_kib:0L sim in
  Squeezer.balance_memory (Squeezer.create ~policy ()) io ;
  let given d = Int64.sub (Sim.domain sim d).target_kib gib in
  (given 1, given 2)

let weights_share_memory_out () =
  let near ~what expected got =
    Check.is_true
      ~what:(Printf.sprintf "%s: %Ld KiB, expected %Ld within 16" what got expected)
      (Int64.abs (Int64.sub got expected) <= 16L)
  in
  List.iter
    (fun policy ->
      let a, b = given policy 1.0 1.0 in
      near ~what:"equal weights, first" gib a ;
      near ~what:"equal weights, second" gib b ;
      let a, b = given policy 1.0 3.0 in
      near ~what:"weight 1" (512L * mib) a ;
      near ~what:"weight 3" (1536L * mib) b)
    [Squeezer.Classic; Squeezer.Adaptive] ;
  match given Squeezer.Classic 1.0 0.0 with
  | _ -> Check.fail "a weight of 0 was accepted"
  | exception Squeeze_error (Backend_failure, _) -> ()

let () =
  Check.run "policy"
    [
      ("weights in the snapshot share memory out in proportion", weights_share_memory_out)
    ; ("adaptive frees at the speed of both guests, classic at the slowest", freeing_follows_balloon_speed)
    ; ("the adaptive squeezer names and scores a stuck guest", a_stuck_guest_is_scored)
    ]
