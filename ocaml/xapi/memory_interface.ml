(* See memory_interface.mli. Types only; the calls are in Memory_client. *)

type debug_info = string

type session_id = string

type reservation_id = string

type domain_zero_policy = Fixed_size of int64 | Auto_balloon of int64 * int64

type reserve_memory_range_result = reservation_id * int64

type errors = Squeeze_memory.errors =
  | Cannot_free_this_much_memory of (int64 * int64)
  | Domains_refused_to_cooperate of int list
  | Unknown_reservation of reservation_id
  | No_reservation
  | Invalid_memory_value of int64
  | Internal_error of string
  | Unknown_error

exception MemoryError = Squeeze_memory.MemoryError
