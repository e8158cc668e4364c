(** squeezed's memory service ([Memory_interface] in xapi-idl) as a library, over libsqueeze's
    [sqz_service_*] calls.

    The calls have squeezed's names and arguments, and fail with {!MemoryError} carrying
    squeezed's [errors], so a toolstack written against squeezed's client maps one to one.
    Where squeezed's calls take a [debug_info] they take the service here; the rest of the
    arguments are squeezed's, in its order. Sizes are KiB unless said otherwise. Calls release the OCaml runtime lock while
    libsqueeze works (ballooning may take seconds), so other threads keep running. *)

(** squeezed's [Memory_interface.errors], constructor for constructor. *)
type errors =
  | Cannot_free_this_much_memory of (int64 * int64)
      (** [(required, free)]: even with every domain at its dynamic-min, [required] KiB cannot
          be freed; [free] KiB are free. Both net of the host-reserved memory, as squeezed. *)
  | Domains_refused_to_cooperate of int list
      (** These domains did not reach their balloon targets in time. *)
  | Unknown_reservation of string
      (** The session holds no reservation with this id (the id given). *)
  | No_reservation  (** [query_reservation_of_domain]: the domain holds none. *)
  | Invalid_memory_value of int64
      (** A size that is negative, above 2^50 KiB, or a range whose min is above its max (the
          min is reported then). *)
  | Internal_error of string
      (** Anything squeezed has no constructor for: a bad session name, a domain that does not
          exist, a failure of the host's platform. The text names the library's status
          ([SQZ_ERR_...]) and its message. *)
  | Unknown_error  (** Kept for squeezed compatibility; never raised. *)

exception MemoryError of errors
(** squeezed's [Memory_interface.MemoryError]. *)

(** A fake host for tests: a simulated hypervisor and store in this process, whose guests run
    ideal balloon drivers. Time is simulated; the service's waits advance it. *)
module Fake_host : sig
  type t

  val create :
    ?boot_delay_s:float -> total_kib:int64 -> xen_kib:int64 -> dom0_kib:int64 -> unit -> t
  (** A host of [total_kib], of which Xen keeps [xen_kib] and domain 0 holds [dom0_kib];
      guests start ballooning [boot_delay_s] (default 0) after being unpaused. Raises
      [Invalid_argument] for bad sizes. *)

  val create_domain :
    t ->
    ?offset_kib:int64 ->
    ?rate_kib_per_s:int64 ->
    ?stuck:bool ->
    target_kib:int64 ->
    dynamic_min_kib:int64 ->
    dynamic_max_kib:int64 ->
    unit ->
    int
  (** Creates a paused domain with no memory yet, writing its balloon range to the store as a
      toolstack does, and returns its domid. [offset_kib] (default 0) is memory it holds
      beyond its target; [rate_kib_per_s] (default 1 GiB/s) its balloon speed; with [stuck]
      (default false) its balloon driver comes up but never moves. *)

  val build_domain : t -> int -> int64 -> unit
  (** [build_domain h domid kib] allocates [kib] to the domain, as the domain builder does.
      Raises [Failure] beyond its maxmem or the host's free memory. *)

  val unpause : t -> int -> unit
  (** Starts the domain: its balloon driver comes up after the boot delay. *)

  val destroy_domain : t -> int -> unit
  (** Destroys a domain: its memory returns to the host and its store directory goes. Raises
      [Invalid_argument] for domain 0, [Failure] for a domid that is not a domain. *)

  val advance : t -> float -> unit
  (** Lets this many seconds of simulated time pass. *)

  (** A domain as the hypervisor reports it. *)
  type domain = {
    tot_kib: int64;  (** memory it has allocated *)
    max_kib: int64;  (** its allocation limit (maxmem) *)
    booted: bool;  (** its balloon driver is up *)
  }

  val domain : t -> int -> domain
  (** Raises [Invalid_argument] for an unknown domid. *)

  val free_mem_kib : t -> int64
  (** The host's free memory as the hypervisor reports it. *)
end

type service
(** A memory service over one host. Released when no longer reachable. *)

(** Which algorithm a service decides with: {!Squeeze.Squeezer.policy}. [Classic] is squeezed's,
    decision for decision (a fresh squeezer per call); [Adaptive], the default of {!create_fake}
    and {!open_xen}, is one adaptive squeezer for the service's life: measured balloon rates,
    remembered limits, requests that end when progress stops, and a non-cooperation score that
    sets [memory/uncooperative]. *)
type policy = Squeeze.Squeezer.policy = Classic | Adaptive

(** How domain 0's memory is managed (KiB). *)
type domain_zero =
  | Fixed  (** never ballooned: left out of the balancing (the default, as squeezed's) *)
  | Balloon of int64 * int64 option
      (** balanced like a guest between [(dynamic_min, dynamic_max)]; [None] for the maximum
          is what domain 0 holds when the first service of this boot opens (squeezed's
          [auto]). The range is written to the store when the service opens. *)

val create_fake :
  ?host_reserved_kib:int64 ->
  ?lock_path:string ->
  ?boot_time_record_path:string ->
  ?policy:policy ->
  ?domain_zero:domain_zero ->
  ?balance_interval_s:float ->
  Fake_host.t ->
  service
(** A service over a fake host. [host_reserved_kib] is the memory kept free for Xen (default
    72 MiB); [lock_path] (default [/run/squeeze/host.lock]) is the host-wide lock file and
    [boot_time_record_path] (default [/run/squeeze/boot_time_memory]) where free memory at
    boot is recorded, now if no service of this boot recorded it; [policy] defaults to
    [Adaptive] (pass [~policy:Classic] for squeezed's algorithm); [domain_zero] to [Fixed];
    [balance_interval_s] (default 10, squeezed's) is the background balancer's period (see
    {!start_balancer}; [Invalid_argument] outside (0, 86400]). A domain 0 range that is upside down or out of [0..2^50] is [Invalid_memory_value]. *)

(** What most recently counted against a balloon driver: {!Squeeze.Squeezer.concern}. *)
type concern = Squeeze.Squeezer.concern = Too_slow | Not_moving | Stalled_and_resumed

(** How a domain's balloon driver has been cooperating: {!Squeeze.Squeezer.cooperation}. *)
type cooperation = Squeeze.Squeezer.cooperation =
  {score_s: float; uncooperative: bool; concern: concern option}

val cooperation : service -> int -> cooperation
(** How the domain's balloon driver has been cooperating, as the service's adaptive squeezer
    has seen it. Raises [MemoryError (Internal_error _)] with the [Classic] policy (it keeps no
    scores) or for a domain the service has not seen. *)

val open_xen :
     ?host_reserved_kib:int64
  -> ?lock_path:string
  -> ?boot_time_record_path:string
  -> ?policy:policy
  -> ?domain_zero:domain_zero
  -> ?balance_interval_s:float
  -> unit
  -> service
(** A service over this host's Xen (libxenctrl and xenstored), with the settings of
    {!create_fake}. Raises [MemoryError (Internal_error _)] naming [SQZ_ERR_UNSUPPORTED] when
    libsqueeze was built without Xen support (cargo feature [xen]), or [SQZ_ERR_BACKEND] with
    the reason when there is no usable Xen here (no hypervisor, no xenstored). *)

val login : service -> string -> string
(** [login s service_name] starts a session and returns its id (the name itself, as
    squeezed). Reservations that service made earlier and never transferred are dropped. *)

val reserve_memory : service -> string -> int64 -> string
(** [reserve_memory s session kib] frees [kib] (ballooning domains down if needed), sets it
    aside and returns the reservation id. *)

val reserve_memory_range : service -> string -> int64 -> int64 -> string * int64
(** [reserve_memory_range s session min max] reserves what the policy gives a new domain with
    that range (at least [min]) and returns the id and the amount. *)

val delete_reservation : service -> string -> string -> unit
(** [delete_reservation s session id] releases a reservation, transferred or not. *)

val transfer_reservation_to_domain : service -> string -> string -> int -> unit
(** [transfer_reservation_to_domain s session id domid] hands the reservation to an existing
    domain being built: it becomes its initial reservation and its maxmem. Domain 0, a booted
    guest and a domain that already holds a reservation are refused. *)

val query_reservation_of_domain : service -> string -> int -> string
(** The id of the reservation transferred to the domain; [No_reservation] if none. *)

val balance_memory : service -> unit
(** Hands free memory above the host-reserved amount back to the
    domains. *)

val get_host_reserved_memory : service -> int64
(** The memory kept free for Xen, in KiB. *)

(** Domain 0's policy as xapi reads it (KiB; squeezed answers bytes). *)
type domain_zero_size =
  | Fixed_size of int64  (** not ballooned; holds this much now *)
  | Auto_balloon of int64 * int64  (** ballooned between these sizes *)

val get_domain_zero_policy : service -> domain_zero_size
(** How domain 0's memory is managed: a fixed domain 0's size is what it holds now; a
    ballooned one's maximum is the one written to the store when the first service of this
    boot opened (or the one given). *)

val get_host_initial_free_memory : service -> int64
(** Host free memory at boot, in {b bytes}, as squeezed reports it (the C API answers in KiB;
    this multiplies by 1024): recorded when the first service of this boot opened. *)

val get_diagnostics : service -> string
(** The diagnostics JSON document (versioned; its fields are described in
    docs/diagnostics.md and its schema is docs/diagnostics.schema.json): host free memory and
    slush, the reservations by session, the reservations waiting for memory, every domain's
    range, target, actual and offset, the last decision, counters and settings. *)

(** {1 The background balancer} *)

val start_balancer : service -> unit
(** Starts squeezed's balance thread for this service: every [balance_interval_s] seconds (real
    time) it balances the host if a pass would change a target. The thread belongs to the
    library (it runs no OCaml code); starting it twice is harmless. *)

val stop_balancer : service -> unit
(** Stops it and waits for a pass under way to end (the runtime lock is released meanwhile);
    harmless when it does not run. A service that is collected stops its balancer too. *)

(** {1 Progress and cancellation of a reservation} *)

(** Where a reservation stands, reported before each wait for the balloon drivers. *)
type progress = {
    freed_kib: int64  (** host free memory gained since the call started *)
  ; needed_kib: int64
        (** what it had to gain: the amount asked, the slush included, minus what was free *)
  ; elapsed_s: float  (** seconds since the call started, on the host's clock *)
  ; eta_s: float option
        (** seconds still to wait at the speed seen so far; [None] until something was freed *)
}

(** A way to stop reservations from another thread. *)
module Cancel : sig
  type t
  (** Released when no longer reachable. *)

  val create : unit -> t

  val request : t -> unit
  (** Stops every reservation given this handle, under way or to come, at its next wait. *)
end

exception Cancelled
(** A reservation was stopped by {!Cancel.request}; nothing was reserved. *)

exception Deadline_exceeded of string
(** A reservation given a [deadline] could not be served within it; nothing was reserved. The
    text says why, with the predicted time under the adaptive policy. *)

val reserve_memory_with :
     service
  -> ?progress:(progress -> unit)
  -> ?cancel:Cancel.t
  -> ?deadline:float
  -> string
  -> int64
  -> string
(** {!reserve_memory} with a progress closure (called on the calling thread between two
    rounds, inside the call: it must not call the service), a cancel handle and a deadline in seconds from
    the start of the call. An exception raised by [progress] stops the reservation and is
    re-raised; nothing is reserved then. Past the deadline it raises {!Deadline_exceeded}:
    under the adaptive policy as soon as the guests' measured balloon rates predict it cannot
    be met, under the classic one when it passes. Raises [Invalid_argument] for a deadline
    that is not finite and above 0. *)

val reserve_memory_range_with :
     service
  -> ?progress:(progress -> unit)
  -> ?cancel:Cancel.t
  -> ?deadline:float
  -> string
  -> int64
  -> int64
  -> string * int64
(** {!reserve_memory_range} with progress, cancellation and a deadline, as
    {!reserve_memory_with};
    progress is measured toward what the policy gives the new domain. *)
