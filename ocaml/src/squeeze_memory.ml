(* squeezed's memory service over libsqueeze's sqz_service_* calls (squeeze_memory_stubs.c). *)

type errors =
  | Cannot_free_this_much_memory of (int64 * int64)
  | Domains_refused_to_cooperate of int list
  | Unknown_reservation of string
  | No_reservation
  | Invalid_memory_value of int64
  | Internal_error of string
  | Unknown_error

exception MemoryError of errors

let () =
  Printexc.register_printer (function
    | MemoryError e ->
        let s =
          match e with
          | Cannot_free_this_much_memory (r, f) ->
              Printf.sprintf "Cannot_free_this_much_memory (%Ld, %Ld)" r f
          | Domains_refused_to_cooperate ds ->
              Printf.sprintf "Domains_refused_to_cooperate [%s]"
                (String.concat "; " (List.map string_of_int ds))
          | Unknown_reservation id -> Printf.sprintf "Unknown_reservation %S" id
          | No_reservation -> "No_reservation"
          | Invalid_memory_value v -> Printf.sprintf "Invalid_memory_value %Ld" v
          | Internal_error m -> Printf.sprintf "Internal_error %S" m
          | Unknown_error -> "Unknown_error"
        in
        Some ("Squeeze_memory.MemoryError (" ^ s ^ ")")
    | _ -> None)

(* What every stub answers: its result, or the library's status with the last error's details
   (required and free KiB for status 3, domids for status 4). Only C builds these values (the
   REPLY_* tags of the stubs), hence the warning switched off. *)
type 'a reply = Done of 'a | Failed of int * string * int64 * int64 * int array
[@@warning "-37"]

(* The library's status codes (include/squeeze.h). *)
let status_name = function
  | 1 -> "SQZ_ERR_INVALID_ARGUMENT"
  | 2 -> "SQZ_ERR_INVALID_MEMORY_VALUE"
  | 3 -> "SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY"
  | 4 -> "SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE"
  | 5 -> "SQZ_ERR_UNKNOWN_RESERVATION"
  | 6 -> "SQZ_ERR_NO_RESERVATION"
  | 7 -> "SQZ_ERR_BACKEND"
  | 8 -> "SQZ_ERR_UNSUPPORTED"
  | 9 -> "SQZ_ERR_BUFFER_TOO_SMALL"
  | 10 -> "SQZ_ERR_INTERNAL"
  | 11 -> "SQZ_ERR_CANCELLED"
  | 12 -> "SQZ_ERR_DEADLINE"
  | n -> Printf.sprintf "status %d" n

(* [bad_value] is the argument an Invalid_memory_value names; [id] the reservation id an
   Unknown_reservation names. *)
let get ?(bad_value = 0L) ?(id = "") = function
  | Done v -> v
  | Failed (status, msg, required, free, domids) ->
      let e =
        match status with
        | 2 -> Invalid_memory_value bad_value
        | 3 -> Cannot_free_this_much_memory (required, free)
        | 4 -> Domains_refused_to_cooperate (Array.to_list domids)
        | 5 -> Unknown_reservation id
        | 6 -> No_reservation
        | n -> Internal_error (status_name n ^ ": " ^ msg)
      in
      raise (MemoryError e)

(* Fake-host errors are test set-up mistakes, not service errors. *)
let get_fake what = function
  | Done v -> v
  | Failed (status, msg, _, _, _) ->
      let text = Printf.sprintf "Squeeze_memory.Fake_host.%s: %s: %s" what (status_name status) msg in
      if status = 1 || status = 2 then invalid_arg text else failwith text

let check_domid what domid =
  if domid < 0 || domid > 0x7fff_ffff then
    invalid_arg (Printf.sprintf "Squeeze_memory.%s: domid %d out of range" what domid)

module Fake_host = struct
  type t

  external stub_new : int64 -> int64 -> int64 -> float -> t reply = "sqz_ml_fake_new"

  external stub_create_domain :
    t -> int64 -> int64 -> int64 -> int64 -> int64 -> bool -> int reply
    = "sqz_ml_fake_create_domain_bc" "sqz_ml_fake_create_domain"

  external stub_build : t -> int -> int64 -> unit reply = "sqz_ml_fake_build"

  external stub_unpause : t -> int -> unit reply = "sqz_ml_fake_unpause"

  external stub_advance : t -> float -> unit reply = "sqz_ml_fake_advance"

  external stub_destroy : t -> int -> unit reply = "sqz_ml_fake_destroy"

  external stub_free_mem : t -> int64 reply = "sqz_ml_fake_free_mem"

  type domain = {tot_kib: int64; max_kib: int64; booted: bool}

  external stub_domain : t -> int -> domain reply = "sqz_ml_fake_domain"

  let create ?(boot_delay_s = 0.) ~total_kib ~xen_kib ~dom0_kib () =
    get_fake "create" (stub_new total_kib xen_kib dom0_kib boot_delay_s)

  let create_domain t ?(offset_kib = 0L) ?(rate_kib_per_s = 1_048_576L) ?(stuck = false)
      ~target_kib ~dynamic_min_kib ~dynamic_max_kib () =
    get_fake "create_domain"
      (stub_create_domain t target_kib dynamic_min_kib dynamic_max_kib offset_kib rate_kib_per_s
         stuck)

  let build_domain t domid kib =
    check_domid "Fake_host.build_domain" domid ;
    get_fake "build_domain" (stub_build t domid kib)

  let unpause t domid =
    check_domid "Fake_host.unpause" domid ;
    get_fake "unpause" (stub_unpause t domid)

  let destroy_domain t domid =
    check_domid "Fake_host.destroy_domain" domid ;
    get_fake "destroy_domain" (stub_destroy t domid)

  let advance t seconds = get_fake "advance" (stub_advance t seconds)

  let domain t domid =
    check_domid "Fake_host.domain" domid ;
    get_fake "domain" (stub_domain t domid)

  let free_mem_kib t = get_fake "free_mem_kib" (stub_free_mem t)
end

type service

(* (adaptive, SQZ_DOMAIN_ZERO_* policy, domain 0's dynamic-min, its dynamic-max or 0, the
   balance interval or 0). *)
type choice = bool * int * int64 * int64 * float

external stub_service_new_fake :
  Fake_host.t -> int64 option -> string option -> string option -> choice -> service reply
  = "sqz_ml_service_new_fake"

external stub_service_new_xen :
  int64 option -> string option -> string option -> choice -> service reply
  = "sqz_ml_service_new_xen"

type policy = Squeeze.Squeezer.policy = Classic | Adaptive

type domain_zero = Fixed | Balloon of int64 * int64 option

type domain_zero_size = Fixed_size of int64 | Auto_balloon of int64 * int64

let choice policy domain_zero balance_interval_s : choice =
  let adaptive = policy = Adaptive in
  let interval =
    match balance_interval_s with
    | Some s when not (s > 0. && s <= 86_400.) ->
        invalid_arg (Printf.sprintf "Squeeze_memory: balance interval %g s is not in (0, 86400]" s)
    | Some s -> s
    | None -> 0.
  in
  match domain_zero with
  | Fixed -> (adaptive, 0, 0L, 0L, interval)
  | Balloon (min, max) -> (adaptive, 1, min, Option.value max ~default:0L, interval)

external stub_domain_zero : service -> (int * int64 * int64) reply
  = "sqz_ml_get_domain_zero_policy"

type concern = Squeeze.Squeezer.concern = Too_slow | Not_moving | Stalled_and_resumed

type cooperation = Squeeze.Squeezer.cooperation =
  {score_s: float; uncooperative: bool; concern: concern option}

external stub_cooperation : service -> int -> (float * bool * int) reply
  = "sqz_ml_service_cooperation"

external stub_login : service -> string -> unit reply = "sqz_ml_login"

external stub_reserve : service -> string -> int64 -> int64 option -> (string * int64) reply
  = "sqz_ml_reserve"

external stub_reservation : service -> string -> string -> int option -> unit reply
  = "sqz_ml_reservation"

external stub_query : service -> string -> int -> string reply = "sqz_ml_query_reservation"

external stub_balance : service -> unit reply = "sqz_ml_service_balance_memory"

external stub_reserved : service -> int64 reply = "sqz_ml_get_host_reserved_memory"

external stub_initial_free : service -> int64 reply = "sqz_ml_get_host_initial_free_memory"

external stub_diagnostics : service -> string reply = "sqz_ml_get_diagnostics"

(* The size an Invalid_memory_value names for a domain 0 range: one out of range, else the
   min of a reversed range. *)
let dom0_bad_value = function
  | Fixed -> 0L
  | Balloon (min, max) ->
      let out_of_range v = v < 0L || v > Int64.shift_left 1L 50 in
      ( match max with
      | Some m when out_of_range m && not (out_of_range min) -> m
      | _ -> min )

let create_fake ?host_reserved_kib ?lock_path ?boot_time_record_path ?(policy = Adaptive)
    ?(domain_zero = Fixed) ?balance_interval_s host =
  let choice = choice policy domain_zero balance_interval_s in
  get ~bad_value:(dom0_bad_value domain_zero)
    (stub_service_new_fake host host_reserved_kib lock_path boot_time_record_path choice)

let cooperation s domid =
  check_domid "cooperation" domid ;
  let score_s, uncooperative, concern = get (stub_cooperation s domid) in
  {score_s; uncooperative; concern= Squeeze.Squeezer.concern_of_code concern}

let open_xen ?host_reserved_kib ?lock_path ?boot_time_record_path ?(policy = Adaptive)
    ?(domain_zero = Fixed) ?balance_interval_s () =
  let choice = choice policy domain_zero balance_interval_s in
  get ~bad_value:(dom0_bad_value domain_zero)
    (stub_service_new_xen host_reserved_kib lock_path boot_time_record_path choice)

let get_domain_zero_policy s =
  match get (stub_domain_zero s) with
  | 1, min, max -> Auto_balloon (min, max)
  | _, size, _ -> Fixed_size size

let login s service_name =
  get (stub_login s service_name) ;
  service_name

let reserve_memory s session kib = fst (get ~bad_value:kib (stub_reserve s session kib None))

let reserve_memory_range s session min max =
  (* Name the value the library objects to: a size out of range, else the min of a reversed
     range. *)
  let out_of_range v = v < 0L || v > Int64.shift_left 1L 50 in
  let bad_value = if out_of_range min then min else if out_of_range max then max else min in
  get ~bad_value (stub_reserve s session min (Some max))

(* An id with a NUL byte cannot reach the library; like any id that is not a UUID, no
   reservation has it. *)
let check_id id = if String.contains id '\000' then raise (MemoryError (Unknown_reservation id))

let delete_reservation s session id =
  check_id id ;
  get ~id (stub_reservation s session id None)

let transfer_reservation_to_domain s session id domid =
  check_domid "transfer_reservation_to_domain" domid ;
  check_id id ;
  get ~id (stub_reservation s session id (Some domid))

let query_reservation_of_domain s session domid =
  check_domid "query_reservation_of_domain" domid ;
  get (stub_query s session domid)

let balance_memory s = get (stub_balance s)

let get_host_reserved_memory s = get (stub_reserved s)

let get_host_initial_free_memory s = Int64.mul 1024L (get (stub_initial_free s))

let get_diagnostics s = get (stub_diagnostics s)

external stub_start_balancer : service -> unit reply = "sqz_ml_start_balancer"

external stub_stop_balancer : service -> unit reply = "sqz_ml_stop_balancer"

let start_balancer s = get (stub_start_balancer s)

let stop_balancer s = get (stub_stop_balancer s)

exception Cancelled

type progress = {freed_kib: int64; needed_kib: int64; elapsed_s: float; eta_s: float option}

module Cancel = struct
  type t

  external stub_new : unit -> t reply = "sqz_ml_cancel_new"

  external request : t -> unit = "sqz_ml_cancel_request"

  let create () = get (stub_new ())
end

external stub_reserve_with :
     service
  -> string
  -> int64
  -> int64 option
  -> ((int64 * int64 * float * float -> unit) option * Cancel.t option * float option)
  -> (string * int64) reply = "sqz_ml_reserve_with"

exception Deadline_exceeded of string

let reserve_with s ?progress ?cancel ?deadline ~bad_value session min max =
  ( match deadline with
  | Some d when not (Float.is_finite d && d > 0.) ->
      invalid_arg (Printf.sprintf "Squeeze_memory: deadline %g s: must be finite and above 0" d)
  | _ -> () ) ;
  let progress =
    Option.map
      (fun f (freed_kib, needed_kib, elapsed_s, eta) ->
        f {freed_kib; needed_kib; elapsed_s; eta_s= (if eta < 0. then None else Some eta)})
      progress
  in
  match stub_reserve_with s session min max (progress, cancel, deadline) with
  | Failed (11, _, _, _, _) -> raise Cancelled
  | Failed (12, msg, _, _, _) -> raise (Deadline_exceeded msg)
  | reply -> get ~bad_value reply

let reserve_memory_with s ?progress ?cancel ?deadline session kib =
  fst (reserve_with s ?progress ?cancel ?deadline ~bad_value:kib session kib None)

let reserve_memory_range_with s ?progress ?cancel ?deadline session min max =
  let out_of_range v = v < 0L || v > Int64.shift_left 1L 50 in
  let bad_value = if out_of_range min then min else if out_of_range max then max else min in
  reserve_with s ?progress ?cancel ?deadline ~bad_value session min (Some max)
