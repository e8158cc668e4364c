(** The types and errors of xapi-idl's [Memory_interface], for code written against squeezed's
    memory service. Values are the same as squeezed's: sizes in KiB, except where a call says
    otherwise. *)

type debug_info = string
(** A string that names the operation in logs; not interpreted. *)

type session_id = string
(** Returned by [login]: the service name itself. *)

type reservation_id = string
(** A reservation's id (a UUID). *)

(** How domain 0's memory is managed. Sizes in {b bytes}, as squeezed answers them. *)
type domain_zero_policy =
  | Fixed_size of int64  (** never ballooned: holds this much *)
  | Auto_balloon of int64 * int64  (** ballooned between these two sizes *)

type reserve_memory_range_result = reservation_id * int64
(** The reservation and the KiB it holds. *)

(** squeezed's errors, constructor for constructor; the same type as {!Squeeze_memory.errors},
    so the service's errors are these. *)
type errors = Squeeze_memory.errors =
  | Cannot_free_this_much_memory of (int64 * int64)
      (** [(required, free)] in KiB, both net of the host-reserved memory *)
  | Domains_refused_to_cooperate of int list
      (** these domains did not reach their balloon targets in time *)
  | Unknown_reservation of reservation_id  (** no such reservation *)
  | No_reservation  (** [query_reservation_of_domain]: the domain holds none *)
  | Invalid_memory_value of int64
      (** a negative or absurd size, or a range whose min is above its max *)
  | Internal_error of string  (** anything else, with the library's status and message *)
  | Unknown_error  (** never raised *)

exception MemoryError of errors
(** The same exception as {!Squeeze_memory.MemoryError}. *)
