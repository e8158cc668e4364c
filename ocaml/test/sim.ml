(* A simulated Xen host that drives Squeeze through its io record.

   Guests follow Xen's rules: memory a guest takes comes out of host free memory, and no guest
   grows beyond its maxmem. Balloon drivers move toward their target at a fixed rate and stop
   within their inaccuracy of it; some have a flaw (a hidden floor or ceiling, a driver that
   never moves, one that stalls periodically).

   The simulator also referees: a guest asked to grow into memory the host does not have, or a
   target set outside a guest's dynamic range, raises an exception from the io closure that
   caused it. The
   exception travels through the library and comes out of the Squeeze call unchanged, so a
   test sees exactly which rule was broken.

   Time only moves when the balancer waits: each wait is one tick of 0.1 s, whatever length
   was asked for (as in squeezed's own simulator), so a scenario of minutes runs at once. *)

open Squeeze

type driver =
  | Ideal
  | Floor of int64  (** will not shrink below this *)
  | Ceiling of int64  (** will not grow beyond this *)
  | Stuck  (** never moves *)
  | Stalls_every of float  (** works for this many seconds, stalls as long, and so on *)

type guest = {
    mutable domain: domain
  ; rate_kib_per_s: int64
  ; driver: driver
  ; mutable last_update: float
}

exception Over_allocation of {domid: int; wanted_kib: int64; free_kib: int64}
(** A guest tried to grow by more than the host had free. *)

exception Target_outside_dynamic_range of {domid: int; target_kib: int64}

exception Time_limit of float
(** The balancer was still waiting after this many simulated seconds. *)

type t = {
    mutable free_kib: int64
  ; guests: guest list  (** updated in this order *)
  ; mutable ticks: int
  ; time_limit_s: float
}

let tick_s = 0.1

let now t = float_of_int t.ticks *. tick_s

let create ?(time_limit_s = 600.) ~free_kib guests =
  {
    free_kib
  ; guests=
      List.map
        (fun (domain, rate_kib_per_s, driver) ->
          {domain; rate_kib_per_s; driver; last_update= 0.})
        guests
  ; ticks= 0
  ; time_limit_s
  }

let guest t domid = List.find (fun g -> g.domain.domid = domid) t.guests

let domain t domid = (guest t domid).domain

let host t =
  make_host ~free_mem_kib:t.free_kib
    ~domains:
      (List.fold_left (fun s g -> DomainSet.add g.domain s) DomainSet.empty t.guests)

(* How far an honest driver moves in [seconds]: toward the target at its rate, rounding the
   distance down to whole KiB, and stopping [inaccuracy] short of the target. *)
let honest_step d rate seconds =
  let budget = Int64.of_float (seconds *. Int64.to_float rate) in
  let gap = Int64.sub d.target_kib d.memory_actual_kib in
  let reach = max 0L (Int64.sub (Int64.abs gap) d.inaccuracy_kib) in
  let step = min reach budget in
  if gap < 0L then Int64.neg step else step

let working_at period t = int_of_float (t /. period) mod 2 = 0

let step g now =
  let d = g.domain in
  let elapsed = now -. g.last_update in
  let honest = honest_step d g.rate_kib_per_s in
  match g.driver with
  | Ideal -> honest elapsed
  | Stuck -> 0L
  | Floor floor ->
      let s = honest elapsed in
      let after = Int64.add d.memory_actual_kib s in
      if s < 0L && after < floor then Int64.sub (min floor d.memory_actual_kib) d.memory_actual_kib
      else s
  | Ceiling ceiling ->
      let s = honest elapsed in
      let after = Int64.add d.memory_actual_kib s in
      if s > 0L && after > ceiling then Int64.sub (max ceiling d.memory_actual_kib) d.memory_actual_kib
      else s
  | Stalls_every period ->
      (* Only a stretch of time wholly inside a working period counts. *)
      if working_at period g.last_update && working_at period now then honest elapsed else 0L

let advance t =
  t.ticks <- t.ticks + 1 ;
  let now = now t in
  if now > t.time_limit_s then raise (Time_limit t.time_limit_s) ;
  List.iter
    (fun g ->
      let d = g.domain in
      let s = step g now in
      (* Xen refuses to let a guest grow past maxmem. *)
      let s = if s > 0L then min s (max 0L (Int64.sub d.memory_max_kib d.memory_actual_kib)) else s in
      if s > t.free_kib then
        raise (Over_allocation {domid= d.domid; wanted_kib= s; free_kib= t.free_kib}) ;
      g.domain <- {d with memory_actual_kib= Int64.add d.memory_actual_kib s} ;
      g.last_update <- now ;
      t.free_kib <- Int64.sub t.free_kib s)
    t.guests

(* Sets target and maxmem together (a real platform raises maxmem before a higher target and
   lowers it after a lower one, so the target is never above maxmem). squeezed's Xen platform
   routes maxmem changes through the same path, so set_maxmem moves the target too. *)
let set_target t domid kib =
  let g = guest t domid in
  let d = g.domain in
  if kib <> d.target_kib && (kib < d.dynamic_min_kib || kib > d.dynamic_max_kib) then
    raise (Target_outside_dynamic_range {domid; target_kib= kib}) ;
  g.domain <- {d with target_kib= kib; memory_max_kib= kib}

type counters = {mutable snapshots: int; mutable actions: int; mutable waits: int}

let io ?(counters = {snapshots= 0; actions= 0; waits= 0}) ~target_host_free_mem_kib
    ?(free_memory_tolerance_kib = 0L) t =
  {
    verbose= false
  ; make_host=
      (fun () ->
        counters.snapshots <- counters.snapshots + 1 ;
        (Printf.sprintf "free %Ld KiB at %.1f s" t.free_kib (now t), host t))
  ; domain_setmaxmem= set_target t
  ; execute_action=
      (fun a ->
        counters.actions <- counters.actions + 1 ;
        set_target t a.action_domid a.new_target_kib)
  ; wait=
      (fun _ ->
        counters.waits <- counters.waits + 1 ;
        advance t)
  ; gettimeofday= (fun () -> now t)
  ; target_host_free_mem_kib
  ; free_memory_tolerance_kib
  }

(* Memory the host would still have free if every guest grew to target + inaccuracy, the most
   a driver may overshoot. *)
let free_in_worst_case t =
  List.fold_left
    (fun free g ->
      let d = g.domain in
      Int64.sub free
        (Int64.sub (Int64.add d.target_kib d.inaccuracy_kib) d.memory_actual_kib))
    t.free_kib t.guests

let total_kib t =
  List.fold_left (fun acc g -> Int64.add acc g.domain.memory_actual_kib) t.free_kib t.guests
