(* See squeeze_log.mli. The C side (squeeze_log_stubs.c) only queues records; the thread
   started here hands them to the logger. *)

type level = Error | Warn | Info | Debug | Trace

let string_of_level = function
  | Error -> "error"
  | Warn -> "warn"
  | Info -> "info"
  | Debug -> "debug"
  | Trace -> "trace"

(* The SQZ_LOG_* values of include/squeeze.h. *)
let int_of_level = function Error -> 1 | Warn -> 2 | Info -> 3 | Debug -> 4 | Trace -> 5

let level_of_int = function
  | 1 -> Error
  | 2 -> Warn
  | 3 -> Info
  | 4 -> Debug
  | _ -> Trace

external stub_install : int -> int = "sqz_ml_log_install"

external stub_take : unit -> (int * string * string) list * int = "sqz_ml_log_take"

external stub_delivered : int -> unit = "sqz_ml_log_delivered"

external stub_wait : unit -> unit = "sqz_ml_log_wait"

external stub_dropped : unit -> int = "sqz_ml_log_dropped"

external stub_write : int -> string -> string -> unit = "sqz_ml_log_write"

let lock = Mutex.create ()

let logger : (level -> string -> string -> unit) option ref = ref None

let deliverer : Thread.t option ref = ref None

let with_lock f =
  Mutex.lock lock ;
  match f () with
  | v ->
      Mutex.unlock lock ; v
  | exception e ->
      Mutex.unlock lock ; raise e

let rec deliver () =
  let newest_first, last = stub_take () in
  let f = with_lock (fun () -> !logger) in
  ( match f with
  | Some f ->
      List.iter
        (fun (level, target, message) ->
          try f (level_of_int level) target message with _ -> ())
        (List.rev newest_first)
  | None ->
      () ) ;
  stub_delivered last ;
  deliver ()

let install level =
  match stub_install level with
  | 0 ->
      ()
  | status ->
      failwith
        (Printf.sprintf "Squeeze_log: the library refused the log callback (status %d)" status)

let set_logger ?(level = Info) f =
  with_lock (fun () ->
      logger := Some f ;
      if !deliverer = None then deliverer := Some (Thread.create deliver ())) ;
  install (int_of_level level)

let clear () =
  install 0 ;
  with_lock (fun () -> logger := None)

let flush () =
  match with_lock (fun () -> !deliverer) with
  | Some t when Thread.id t <> Thread.id (Thread.self ()) ->
      stub_wait ()
  | _ ->
      ()

let dropped = stub_dropped

let write level target message = stub_write (int_of_level level) target message
