(** xapi-idl's [Memory_client]: the calls of squeezed's memory service, made in this process
    through libsqueeze instead of over squeezed's socket.

    Every call takes the [debug_info] first, then squeezed's arguments in squeezed's order and
    units (KiB, except where said), and fails with {!Memory_interface.MemoryError}. Calls run
    on the caller's thread with the OCaml runtime lock released while libsqueeze works, so
    several threads may call at once (the library serialises what must be).

    Which service answers: the one given to {!use}, else this host's Xen, opened on the first
    call that needs it (once per process, whichever thread gets there first; a failure to
    open is raised to that call and the next call tries again) with {!Squeeze_memory.open_xen}'s
    defaults (the adaptive policy, domain 0 fixed, [/run/squeeze/host.lock]) and its
    background balancer started, as squeezed's runs. *)

val use : Squeeze_memory.service -> unit
(** [use s] makes every later call go to [s] (a service over a fake host in tests, or one
    opened with settings of the caller's choosing). *)

val service : unit -> Squeeze_memory.service
(** The service the calls go to, opening this host's Xen service if none is set. Raises
    {!Memory_interface.MemoryError} ([Internal_error]) when it cannot be opened. *)

module Client : sig
  open Memory_interface

  val get_diagnostics : debug_info -> string
  (** The diagnostics document (JSON; squeezed answers a placeholder string). *)

  val login : debug_info -> string -> session_id
  (** [login dbg service_name] returns the session id (the name). Reservations that service
      made earlier and never transferred to a domain are dropped. *)

  val reserve_memory : debug_info -> session_id -> int64 -> reservation_id
  (** [reserve_memory dbg session kib] frees [kib] (ballooning guests down if needed) and sets
      it aside. *)

  val reserve_memory_range :
    debug_info -> session_id -> int64 -> int64 -> reserve_memory_range_result
  (** [reserve_memory_range dbg session min max] sets aside what the policy gives a new domain
      that may have [min..max] KiB; returns the id and the amount. *)

  val delete_reservation : debug_info -> session_id -> reservation_id -> unit
  (** Releases a reservation, transferred or not. An unknown id (never made, or already
      deleted) is logged and ignored, as squeezed's store removal ignores it. *)

  val transfer_reservation_to_domain :
    debug_info -> session_id -> reservation_id -> int -> unit
  (** [transfer_reservation_to_domain dbg session id domid] hands the reservation to a domain
      that exists: it becomes its initial reservation and its maxmem. A domid that is negative
      or not a domain is [Internal_error]. *)

  val query_reservation_of_domain : debug_info -> session_id -> int -> reservation_id
  (** The id of the reservation transferred to the domain; [No_reservation] if none (also for
      a negative domid). *)

  val balance_memory : debug_info -> unit
  (** Hands free memory above the host-reserved amount back to the guests. Never raises
      [MemoryError], as squeezed's never does: a failure is logged. *)

  val get_host_reserved_memory : debug_info -> int64
  (** The memory kept free for Xen, KiB. *)

  val get_host_initial_free_memory : debug_info -> int64
  (** Host free memory when the first service of this boot was opened, in {b bytes} as squeezed
      answers it. *)

  val get_domain_zero_policy : debug_info -> domain_zero_policy
  (** How domain 0's memory is managed, in {b bytes} as squeezed answers it: [Fixed_size] what
      it holds, or [Auto_balloon (min, max)] (see {!Squeeze_memory.domain_zero}). *)
end
