(* squeeze: host memory balancing for Xen, as a library.
   SPDX-License-Identifier: LGPL-2.1-or-later *)

(** Reserving and balancing host memory between Xen domains.

    This module has the interface of squeezed's [Squeeze] module, so xapi and xenopsd can switch
    to it by changing a library name. The balancing itself runs in libsqueeze (through its C
    API, [squeeze.h]); the platform is the caller's {!io} record of closures, called back from
    the library on the calling thread.

    All sizes are in KiB. *)

(** {1 Tunables}

    Settings of the memory service that hosts this module (squeezed reads them from its
    configuration file). The balancing functions below do not read them. *)

val manage_domain_zero : bool ref
(** Whether domain 0 takes part in ballooning. Default [false]. *)

val domain_zero_dynamic_min : int64 ref
(** Dynamic-min of domain 0 when it is managed, in bytes. Default 1 GiB. *)

val domain_zero_dynamic_max : int64 option ref
(** Dynamic-max of domain 0 when it is managed, in bytes; [None] means its static max. *)

val boot_time_host_free_memory_constant_count_min : int ref
(** How many equal readings of host free memory in a row count as settled at boot. Default 10. *)

val boot_time_host_free_memory_check_interval : float ref
(** Seconds between those readings. Default 1. *)

(** {1 The host model} *)

type domain = {
    domid: int
  ; can_balloon: bool  (** a balloon driver is running and may be asked to move *)
  ; dynamic_min_kib: int64  (** lowest balloon target the policy may set *)
  ; target_kib: int64  (** balloon target currently set *)
  ; dynamic_max_kib: int64  (** highest balloon target the policy may set *)
  ; memory_actual_kib: int64  (** memory the domain uses now *)
  ; memory_max_kib: int64  (** Xen's maxmem: the domain cannot allocate beyond it *)
  ; inaccuracy_kib: int64  (** how far from its target a balloon driver may settle *)
  ; weight: float
        (** Not in squeezed: the domain's weight in the policy. Memory handed out (or taken
            back) is shared in proportion to weight x dynamic range, within each range; with
            equal weights the policy is squeezed's to the KiB. 1 by default; from 0.001 to
            1000, else the call fails with [Squeeze_error (Backend_failure, _)]. *)
}

val domain_make :
  int -> bool -> int64 -> int64 -> int64 -> int64 -> int64 -> int64 -> domain
(** [domain_make domid can_balloon dynamic_min target dynamic_max actual maxmem inaccuracy],
    of weight 1 (set another with [{d with weight}]). *)

(** Sets of domains, ordered (and made unique) by domid. *)
module DomainSet : Set.S with type elt = domain

type host = {domains: DomainSet.t; free_mem_kib: int64}

val make_host : domains:DomainSet.t -> free_mem_kib:int64 -> host

type action = {action_domid: int; new_target_kib: int64}
(** A new balloon target for one domain. *)

val ( -* ) : int64 -> int64 -> int64

val ( +* ) : int64 -> int64 -> int64

val ( ** ) : int64 -> int64 -> int64

(** What one round of the balancer decides. *)
type result = Success | Failed of int list | AdjustTargets of action list

val has_hit_target : int64 -> int64 -> int64 -> bool
(** [has_hit_target inaccuracy actual target]: [actual] is within [inaccuracy] of [target]. *)

(** The per-domain progress record kept by a stuckness monitor (kept for source
    compatibility: the monitor itself lives in the library). *)
module Stuckness_monitor : sig
  type per_domain_state = {
      mutable last_actual_kib: int64
    ; mutable last_makingprogress_time: float
    ; mutable stuck: bool
  }

  type t = {per_domain: (int, per_domain_state) Hashtbl.t}
end

(** Fault-injection points, for tests that show why a safety mechanism exists. *)
type fistpoint =
  | DisableTwoPhaseTargetSets
      (** set growing and shrinking targets in the same round *)
  | DisableInaccuracyCompensation
      (** count a domain's whole distance to dynamic-min as freeable *)

val min_freeable : ?fistpoints:fistpoint list -> domain -> int64
(** Memory a domain is sure to free by going to its dynamic-min: its distance to dynamic-min
    less twice its inaccuracy (the driver may stop that far short), and never negative. *)

(** Plots of a host over time, for gnuplot. A data file has one row per sample: the time, the
    host's free memory, then the chosen columns for each domain in domid order. *)
module Gnuplot : sig
  type colspec = Dynamic_min | Memory_actual | Dynamic_max | Target

  val write_header : out_channel -> colspec list -> unit
  (** A comment line naming the columns written for each domain. *)

  val write_row : out_channel -> host -> colspec list -> float -> unit
  (** [write_row oc host cols time] appends one sample. *)

  val write_gp : string -> host -> colspec list -> unit
  (** [write_gp stem host cols] writes [stem.gp], a gnuplot script plotting [stem.dat] with a
      line per column for each domain of [host]. *)
end

(** {1 Balancing} *)

(** The platform, as closures the library calls back. *)
type io = {
    verbose: bool  (** kept for compatibility; the library does not print *)
  ; make_host: unit -> string * host
        (** a fresh snapshot of the host (the string is a description for logs) *)
  ; domain_setmaxmem: int -> int64 -> unit
  ; execute_action: action -> unit
  ; wait: float -> unit  (** let the given number of seconds pass *)
  ; gettimeofday: unit -> float  (** current time in seconds, never going backwards *)
  ; target_host_free_mem_kib: int64  (** memory kept free when balanced (the slush) *)
  ; free_memory_tolerance_kib: int64  (** how close to the slush counts as balanced *)
}

exception Cannot_free_this_much_memory of int64 * int64
(** [(required, free)]: even with every domain at its dynamic-min, [required] KiB cannot be
    free; [free] KiB was free when the library gave up. *)

exception Domains_refused_to_cooperate of int list
(** These domains did not move toward their targets, and without them the memory asked for
    cannot be freed. *)

(** Why the library refused a call, beyond the two outcomes above. *)
type error_kind =
  | Invalid_argument_error
  | Invalid_memory_value
  | Unknown_reservation
  | No_reservation
  | Backend_failure  (** a callback failed or returned nonsense, such as a clock going back *)
  | Unsupported
  | Buffer_too_small
  | Internal_error
  | Unknown_status of int  (** a status this binding does not know *)

exception Squeeze_error of error_kind * string
(** The library's error, with its message. *)

(** Every function below calls the closures of [io] from the calling thread only. While the
    library computes between two callbacks the OCaml runtime lock is released, so other
    threads run. An exception raised by a closure stops the operation and is re-raised,
    unchanged and with its backtrace, by the function that was called. *)

val change_host_free_memory :
  ?fistpoints:fistpoint list -> io -> int64 -> (int64 -> bool) -> unit
(** [change_host_free_memory io required success] balloons domains until [success] holds for
    host free memory, aiming for [required] KiB free.
    @raise Cannot_free_this_much_memory when dynamic-mins are too high
    @raise Domains_refused_to_cooperate naming the stuck domains that could have helped *)

val free_memory_range :
  ?fistpoints:fistpoint list -> io -> int64 -> int64 -> int64
(** [free_memory_range io min max] frees memory for a new domain whose size may be anything in
    [min..max], and returns how much it may have. The policy first decides what the domain would
    get if it were already running; at least [min] above the slush must end up free. *)

val is_balanced : ?fistpoints:'a -> io -> int64 -> bool
(** [is_balanced io free]: [free] is within the tolerance above the slush. *)

val balance_memory : ?fistpoints:fistpoint list -> io -> unit
(** Hands free memory back to the domains until only the slush is free. Like squeezed's, it
    never raises: it stops quietly when memory cannot be balanced further, and also when the
    library or a closure of [io] fails (the next call tries again). *)

val is_host_memory_unbalanced : ?fistpoints:fistpoint list -> io -> bool
(** Whether a balancing pass would change any domain's target now. *)

(** {1 A squeezer kept across calls}

    The functions above are squeezed's: a fresh classic squeezer per call. A {!Squeezer.t}
    keeps its state between calls and decides with the policy chosen at creation; with
    [Adaptive] it learns each guest's balloon speed and limits, ends a request when progress
    stops, and scores how each balloon driver cooperates. *)
module Squeezer : sig
  (** Which algorithm decides. *)
  type policy =
    | Classic  (** squeezed's, decision for decision (remembering stuck domains) *)
    | Adaptive  (** rate-aware, remembers limits, flags non-cooperation, never oscillates *)

  (** What most recently counted against a balloon driver. *)
  type concern =
    | Too_slow  (** it moves, but slower than the minimum acceptable rate *)
    | Not_moving  (** it does not move at all while it has work to do *)
    | Stalled_and_resumed  (** it stopped as if at a limit, then moved past it *)

  (** How a domain's balloon driver has been cooperating. *)
  type cooperation = {
      score_s: float  (** seconds of asked-for work not done, leaking away over time *)
    ; uncooperative: bool  (** flagged (set at 10 s, cleared at 3 s with [Adaptive]) *)
    ; concern: concern option
  }

  val concern_of_code : int -> concern option
  (** The concern a [SQZ_CONCERN_*] value of the C API names ([None] for
      [SQZ_CONCERN_NONE] and values it does not know). *)

  type t
  (** A squeezer and what it has learnt. Released when no longer reachable. One call at a
      time: a call while another runs on the same squeezer raises [Squeeze_error]. *)

  val create : ?policy:policy -> unit -> t
  (** A squeezer with no history; [policy] defaults to [Classic]. *)

  val policy : t -> policy

  val change_host_free_memory : t -> io -> int64 -> (int64 -> bool) -> unit
  (** As {!Squeeze.change_host_free_memory}, with this squeezer. *)

  val free_memory_range : t -> io -> int64 -> int64 -> int64
  (** As {!Squeeze.free_memory_range}, with this squeezer. *)

  val balance_memory : t -> io -> unit
  (** As {!Squeeze.balance_memory}, with this squeezer, but failures are raised. *)

  val cooperation : t -> int -> cooperation option
  (** How the domain's balloon driver has been cooperating, as this squeezer has seen it;
      [None] for a domain it has not seen. The classic policy reports its stuck threshold as
      the score of a stuck domain and 0 otherwise. *)
end

(** {1 Tracing} *)

val callback_observer : (bool -> unit) ref
(** Called with [true] when the library hands control to a closure of [io] (or the success
    condition) and with [false] when the closure returns or raises, on the calling thread. All
    OCaml code that runs during a call to the functions above runs between such a pair, so
    this tells time spent in the caller's closures from time spent in the library. Default:
    [ignore]. *)
