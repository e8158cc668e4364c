(* squeeze: host memory balancing for Xen, as a library.
   SPDX-License-Identifier: LGPL-2.1-or-later *)

let manage_domain_zero = ref false

let domain_zero_dynamic_min = ref (Int64.shift_left 1L 30)

let domain_zero_dynamic_max : int64 option ref = ref None

let boot_time_host_free_memory_constant_count_min = ref 10

let boot_time_host_free_memory_check_interval = ref 1.0

(* The C stubs read this record by field position: keep the order in step with the
   DOMAIN_* constants of squeeze_stubs.c. *)
type domain = {
    domid: int
  ; can_balloon: bool
  ; dynamic_min_kib: int64
  ; target_kib: int64
  ; dynamic_max_kib: int64
  ; memory_actual_kib: int64
  ; memory_max_kib: int64
  ; inaccuracy_kib: int64
  ; weight: float
}

let domain_make domid can_balloon dynamic_min_kib target_kib dynamic_max_kib
    memory_actual_kib memory_max_kib inaccuracy_kib =
  {
    domid
  ; can_balloon
  ; dynamic_min_kib
  ; target_kib
  ; dynamic_max_kib
  ; memory_actual_kib
  ; memory_max_kib
  ; inaccuracy_kib
  ; weight= 1.0
  }

module DomainSet = Set.Make (struct
  type t = domain

  let compare a b = Int.compare a.domid b.domid
end)

type host = {domains: DomainSet.t; free_mem_kib: int64}

let make_host ~domains ~free_mem_kib = {domains; free_mem_kib}

type action = {action_domid: int; new_target_kib: int64}

let ( -* ) = Int64.sub

let ( +* ) = Int64.add

let ( ** ) = Int64.mul

type result = Success | Failed of int list | AdjustTargets of action list

let has_hit_target inaccuracy_kib memory_actual_kib target_kib =
  Int64.abs (Int64.sub memory_actual_kib target_kib) <= inaccuracy_kib

module Stuckness_monitor = struct
  type per_domain_state = {
      mutable last_actual_kib: int64
    ; mutable last_makingprogress_time: float
    ; mutable stuck: bool
  }

  type t = {per_domain: (int, per_domain_state) Hashtbl.t}
end

type fistpoint = DisableTwoPhaseTargetSets | DisableInaccuracyCompensation

let min_freeable ?(fistpoints = []) d =
  let held_back =
    if List.mem DisableInaccuracyCompensation fistpoints then 0L
    else Int64.mul 2L d.inaccuracy_kib
  in
  max 0L (Int64.sub (Int64.sub d.memory_actual_kib d.dynamic_min_kib) held_back)

module Gnuplot = struct
  type colspec = Dynamic_min | Memory_actual | Dynamic_max | Target

  (* Columns come out in this fixed order whatever order the caller lists them in, so the
     header, the rows and the script always agree. *)
  let layout = [(Dynamic_min, "dynamic_min"); (Dynamic_max, "dynamic_max");
                (Memory_actual, "memory_actual"); (Target, "target")]

  let chosen cols = List.filter (fun (c, _) -> List.mem c cols) layout

  let column d = function
    | Dynamic_min -> d.dynamic_min_kib
    | Dynamic_max -> d.dynamic_max_kib
    | Memory_actual -> d.memory_actual_kib
    | Target -> d.target_kib

  let write_header oc cols =
    Printf.fprintf oc "# time free_mem_kib, then for each domain: %s\n"
      (String.concat " " (List.map snd (chosen cols)))

  let write_row oc host cols time =
    let cols = chosen cols in
    Printf.fprintf oc "%.2f %Ld" time host.free_mem_kib ;
    DomainSet.iter
      (fun d -> List.iter (fun (c, _) -> Printf.fprintf oc " %Ld" (column d c)) cols)
      host.domains ;
    output_char oc '\n'

  let write_gp stem host cols =
    let cols = chosen cols in
    let data = stem ^ ".dat" in
    let plots =
      Printf.sprintf "%S using 1:2 title \"host free memory\" with lines" data
      :: List.concat
           (List.mapi
              (fun i d ->
                List.mapi
                  (fun j (_, name) ->
                    let style = if name = "dynamic_min" || name = "dynamic_max" then "points" else "lines" in
                    Printf.sprintf "%S using 1:%d title \"domain %d %s\" with %s" data
                      (3 + (i * List.length cols) + j)
                      d.domid name style)
                  cols)
              (DomainSet.elements host.domains))
    in
    let oc = open_out (stem ^ ".gp") in
    Fun.protect
      ~finally:(fun () -> close_out oc)
      (fun () ->
        output_string oc "set xlabel 'time (s)'\nset ylabel 'memory (KiB)'\n" ;
        Printf.fprintf oc "plot %s\n" (String.concat ", \\\n     " plots))
end

type io = {
    verbose: bool
  ; make_host: unit -> string * host
  ; domain_setmaxmem: int -> int64 -> unit
  ; execute_action: action -> unit
  ; wait: float -> unit
  ; gettimeofday: unit -> float
  ; target_host_free_mem_kib: int64
  ; free_memory_tolerance_kib: int64
}

exception Cannot_free_this_much_memory of int64 * int64

exception Domains_refused_to_cooperate of int list

(* The C stubs build values of this type by constructor position: keep the order in step with
   the ERROR_KIND_* constants of squeeze_stubs.c. *)
type error_kind =
  | Invalid_argument_error
  | Invalid_memory_value
  | Unknown_reservation
  | No_reservation
  | Backend_failure
  | Unsupported
  | Buffer_too_small
  | Internal_error
  | Unknown_status of int

exception Squeeze_error of error_kind * string

(* What the stubs see of an [io]: plain closures over C-friendly arguments, plus the settings.
   The stubs read it by field position (RAW_* in squeeze_stubs.c). *)
type raw_io = {
    raw_make_host: unit -> int64 * domain array
  ; raw_set_maxmem: int -> int64 -> unit
  ; raw_execute_action: int -> int64 -> unit
  ; raw_wait: float -> unit
  ; raw_now: unit -> float
  ; raw_success: int64 -> bool
  ; raw_target_host_free_mem_kib: int64
  ; raw_free_memory_tolerance_kib: int64
  ; raw_fistpoints: int  (** SQZ_FIST_* bits *)
}

(* A call's outcome as the stubs report it (constructor order matters: REPLY_* in the stubs).
   Only C builds these values, hence the warning switched off. *)
type 'a reply =
  | Done of 'a
  | Not_enough_memory of int64 * int64
  | Refused_by of int array
  | Error_status of error_kind * string
[@@warning "-37"]

external stub_change_host_free_memory : raw_io -> int64 -> unit reply
  = "sqz_ml_change_host_free_memory"

external stub_free_memory_range : raw_io -> int64 -> int64 -> int64 reply
  = "sqz_ml_free_memory_range"

external stub_balance_memory : raw_io -> unit reply = "sqz_ml_balance_memory"

external stub_is_host_memory_unbalanced : raw_io -> bool reply
  = "sqz_ml_is_host_memory_unbalanced"

external fistpoint_bit : int -> int = "sqz_ml_fistpoint_bit" [@@noalloc]

let fistpoint_bits fistpoints =
  List.fold_left
    (fun acc f ->
      acc
      lor fistpoint_bit
            (match f with DisableTwoPhaseTargetSets -> 0 | DisableInaccuracyCompensation -> 1))
    0 fistpoints

let callback_observer : (bool -> unit) ref = ref ignore

(* What C calls: the caller's closure between the two observer calls. Nothing here allocates
   outside the closure itself, so the observer brackets all the OCaml code that runs during a
   callback. The stubs catch a closure's exception and raise it again once the library has
   returned; the runtime keeps extending the backtrace of an exception raised again
   unchanged, so the caller still sees where it was first raised (whatever the observer does
   in between, hence the explicit backtrace here). *)
let guard f x =
  !callback_observer true ;
  match f x with
  | r ->
      !callback_observer false ;
      r
  | exception e ->
      let bt = Printexc.get_raw_backtrace () in
      !callback_observer false ;
      Printexc.raise_with_backtrace e bt

let guard2 f x y =
  !callback_observer true ;
  match f x y with
  | r ->
      !callback_observer false ;
      r
  | exception e ->
      let bt = Printexc.get_raw_backtrace () in
      !callback_observer false ;
      Printexc.raise_with_backtrace e bt

(* C domids are int32_t. *)
let domid_fits_c d = Int32.to_int (Int32.of_int d.domid) = d.domid

let raw_io ?(fistpoints = []) io success =
  let snapshot () =
    let _, host = io.make_host () in
    let domains = Array.of_list (DomainSet.elements host.domains) in
    Array.iter
      (fun d ->
        if not (domid_fits_c d) then
          invalid_arg (Printf.sprintf "Squeeze: domid %d is out of range" d.domid))
      domains ;
    (host.free_mem_kib, domains)
  in
  let execute domid kib = io.execute_action {action_domid= domid; new_target_kib= kib} in
  (* Closures of the exact arity C applies them with, so applying them allocates nothing. *)
  {
    raw_make_host= (fun () -> guard snapshot ())
  ; raw_set_maxmem= (fun domid kib -> guard2 io.domain_setmaxmem domid kib)
  ; raw_execute_action= (fun domid kib -> guard2 execute domid kib)
  ; raw_wait= (fun s -> guard io.wait s)
  ; raw_now= (fun () -> guard io.gettimeofday ())
  ; raw_success= (fun free -> guard success free)
  ; raw_target_host_free_mem_kib= io.target_host_free_mem_kib
  ; raw_free_memory_tolerance_kib= io.free_memory_tolerance_kib
  ; raw_fistpoints= fistpoint_bits fistpoints
  }

(* Runs one stub call and turns its outcome into a value or this module's exceptions. An
   exception raised by a closure of [io] comes straight out of the stub. *)
let call ?fistpoints io success stub =
  match stub (raw_io ?fistpoints io success) with
  | Done v -> v
  | Not_enough_memory (required, free) ->
      raise (Cannot_free_this_much_memory (required, free))
  | Refused_by domids -> raise (Domains_refused_to_cooperate (Array.to_list domids))
  | Error_status (kind, msg) -> raise (Squeeze_error (kind, msg))

let is_balanced ?fistpoints:_ io x =
  Int64.sub x io.target_host_free_mem_kib < io.free_memory_tolerance_kib

let change_host_free_memory ?fistpoints io required_kib success =
  call ?fistpoints io success (fun raw -> stub_change_host_free_memory raw required_kib)

let free_memory_range ?fistpoints io min_kib max_kib =
  call ?fistpoints io (fun _ -> true) (fun raw -> stub_free_memory_range raw min_kib max_kib)

let balance_memory ?fistpoints io =
  try call ?fistpoints io (is_balanced io) stub_balance_memory with _ -> ()

let is_host_memory_unbalanced ?fistpoints io =
  call ?fistpoints io (is_balanced io) stub_is_host_memory_unbalanced

module Squeezer = struct
  type policy = Classic | Adaptive

  type concern = Too_slow | Not_moving | Stalled_and_resumed

  type cooperation = {score_s: float; uncooperative: bool; concern: concern option}

  (* SQZ_CONCERN_* values. *)
  let concern_of_code = function
    | 1 -> Some Too_slow
    | 2 -> Some Not_moving
    | 3 -> Some Stalled_and_resumed
    | _ -> None

  type handle

  type t = {handle: handle; policy: policy}

  external stub_new : bool -> handle reply = "sqz_ml_squeezer_new"

  external stub_change_host_free_memory : handle -> raw_io -> int64 -> unit reply
    = "sqz_ml_squeezer_change_host_free_memory"

  external stub_free_memory_range : handle -> raw_io -> int64 -> int64 -> int64 reply
    = "sqz_ml_squeezer_free_memory_range"

  external stub_balance_memory : handle -> raw_io -> unit reply
    = "sqz_ml_squeezer_balance_memory"

  external stub_cooperation : handle -> int -> (float * bool * int) reply
    = "sqz_ml_squeezer_cooperation"

  let create ?(policy = Classic) () =
    let handle =
      match stub_new (policy = Adaptive) with
      | Done h -> h
      | Error_status (kind, msg) -> raise (Squeeze_error (kind, msg))
      | Not_enough_memory _ | Refused_by _ -> assert false
    in
    {handle; policy}

  let policy t = t.policy

  let change_host_free_memory t io required_kib success =
    call io success (fun raw -> stub_change_host_free_memory t.handle raw required_kib)

  let free_memory_range t io min_kib max_kib =
    call io (fun _ -> true) (fun raw -> stub_free_memory_range t.handle raw min_kib max_kib)

  let balance_memory t io = call io (is_balanced io) (fun raw -> stub_balance_memory t.handle raw)

  let cooperation t domid =
    if Int32.to_int (Int32.of_int domid) <> domid then
      invalid_arg (Printf.sprintf "Squeeze.Squeezer.cooperation: domid %d is out of range" domid) ;
    match stub_cooperation t.handle domid with
    | Done (score_s, uncooperative, concern) ->
        Some {score_s; uncooperative; concern= concern_of_code concern}
    | Error_status (Invalid_argument_error, _) -> None
    | Error_status (kind, msg) -> raise (Squeeze_error (kind, msg))
    | Not_enough_memory _ | Refused_by _ -> None
end
