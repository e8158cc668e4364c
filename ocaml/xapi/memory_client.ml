(* See memory_client.mli. *)

open Memory_interface

let lock = Mutex.create ()

let current : Squeeze_memory.service option ref = ref None

let with_lock f =
  Mutex.lock lock ;
  Fun.protect ~finally:(fun () -> Mutex.unlock lock) f

let use s = with_lock (fun () -> current := Some s)

(* Opening takes the lock file and may sample free memory for a few seconds on the first open
   of a boot: under the mutex, so a process opens one service however many threads ask. *)
let service () =
  with_lock (fun () ->
      match !current with
      | Some s ->
          s
      | None ->
          let s = Squeeze_memory.open_xen () in
          (* squeezed balances every 10 s whoever calls it: so does the service opened here. *)
          Squeeze_memory.start_balancer s ;
          current := Some s ;
          s)

let log level dbg fmt =
  Printf.ksprintf (fun msg -> Squeeze_log.write level "squeeze.xapi" (dbg ^ ": " ^ msg)) fmt

let valid_domid domid = domid >= 0 && domid <= 0x7fff_ffff

module Client = struct
  let get_diagnostics _dbg = Squeeze_memory.get_diagnostics (service ())

  let login _dbg service_name = Squeeze_memory.login (service ()) service_name

  let reserve_memory _dbg session kib = Squeeze_memory.reserve_memory (service ()) session kib

  let reserve_memory_range _dbg session min max =
    Squeeze_memory.reserve_memory_range (service ()) session min max

  let delete_reservation dbg session id =
    try Squeeze_memory.delete_reservation (service ()) session id
    with MemoryError (Unknown_reservation _) ->
      log Squeeze_log.Debug dbg "delete_reservation: %s has no reservation %s; nothing to do"
        session id

  let transfer_reservation_to_domain _dbg session id domid =
    if not (valid_domid domid) then
      raise (MemoryError (Internal_error (Printf.sprintf "domain %d does not exist" domid))) ;
    Squeeze_memory.transfer_reservation_to_domain (service ()) session id domid

  let query_reservation_of_domain _dbg session domid =
    if not (valid_domid domid) then raise (MemoryError No_reservation) ;
    Squeeze_memory.query_reservation_of_domain (service ()) session domid

  let balance_memory dbg =
    try Squeeze_memory.balance_memory (service ())
    with MemoryError e ->
      log Squeeze_log.Warn dbg "balance_memory failed: %s" (Printexc.to_string (MemoryError e))

  let get_host_reserved_memory _dbg = Squeeze_memory.get_host_reserved_memory (service ())

  let get_host_initial_free_memory _dbg =
    Squeeze_memory.get_host_initial_free_memory (service ())

  let get_domain_zero_policy _dbg =
    let bytes kib = Int64.mul 1024L kib in
    match Squeeze_memory.get_domain_zero_policy (service ()) with
    | Squeeze_memory.Fixed_size kib -> Fixed_size (bytes kib)
    | Squeeze_memory.Auto_balloon (min, max) -> Auto_balloon (bytes min, bytes max)
end
