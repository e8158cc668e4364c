(** The library's log records, delivered to the caller's logger.

    libsqueeze logs through a callback in its C API ([sqz_set_log_callback]); this module plugs
    an OCaml function into it, so records reach the toolstack's own logger (xapi's [Debug], for
    example) with their level, target (the part of the library that wrote them, such as
    ["squeeze::driver"]) and message. Until {!set_logger} is called the library logs nothing.

    The library may log on any thread, including threads OCaml does not know (a service's
    background balancer), so records are queued in C and handed to the logger on one thread
    this module starts: the logger runs on that thread, one record at a time and in order,
    shortly after the record was written. {!flush} waits until everything written so far has
    been handed over. The logger must not block for long; an exception it raises is ignored.
    The C callback is one per process: {!set_logger} replaces any other user of it (such as the
    Python binding's). *)

type level = Error | Warn | Info | Debug | Trace
(** Most severe first. Steady state is quiet: a balanced host writes nothing above [Debug];
    every target change is logged once at [Info] with its reason. *)

val string_of_level : level -> string
(** ["error"], ["warn"], ["info"], ["debug"] or ["trace"]. *)

val set_logger : ?level:level -> (level -> string -> string -> unit) -> unit
(** [set_logger ~level f] sends records at [level] (default [Info]) and more severe to
    [f level target message], replacing any earlier logger. Raises [Failure] if the library
    cannot install its callback (another logger owns the process's Rust log facade). *)

val clear : unit -> unit
(** Stops delivery: records are no longer written. *)

val flush : unit -> unit
(** Returns once every record the library wrote before the call has been handed to the logger
    (at once when called from the logger itself, or before any {!set_logger}). *)

val dropped : unit -> int
(** Records dropped because the logger fell more than 65536 records behind (or memory ran
    out). *)

val write : level -> string -> string -> unit
(** [write level target message] hands a record written by OCaml code (the bindings' own, such
    as [Memory_client]'s) to the logger, in order with the library's, when [level] is
    delivered; without a logger it is dropped. *)
