(* Squeeze_log: the library's records reach an OCaml logger, with their level, target and
   message. Sizes in KiB; the host has 8 GiB, of which Xen keeps 256 MiB and domain 0 holds
   1 GiB: 6.75 GiB free before any guest. *)

open Squeeze_memory

let mib = 1024L

let gib = 1_048_576L

let ( * ) = Int64.mul

(* Records collected by the logger, newest first; the logger runs on Squeeze_log's thread. *)
let records : (Squeeze_log.level * string * string) list ref = ref []

let records_lock = Mutex.create ()

let collect level target message =
  Mutex.lock records_lock ;
  records := (level, target, message) :: !records ;
  Mutex.unlock records_lock

let taken () =
  Squeeze_log.flush () ;
  Mutex.lock records_lock ;
  let r = List.rev !records in
  records := [] ;
  Mutex.unlock records_lock ;
  r

let contains s sub =
  let n = String.length s and m = String.length sub in
  let rec go i = i + m <= n && (String.sub s i m = sub || go (i + 1)) in
  go 0

(* A 4 GiB guest that may shrink to 1 GiB leaves 2.75 GiB free; reserving 3.5 GiB makes it
   balloon down, which the driver logs at Info as a target change with its reason. *)
let host_with_guest () =
  let host = Fake_host.create ~total_kib:(8L * gib) ~xen_kib:(256L * mib) ~dom0_kib:gib () in
  let lock_path = Filename.temp_file "squeeze-log" ".lock" in
  let boot_time_record_path = Filename.temp_file "squeeze-log" ".boot" in
  (* squeezed's policy, named: these records are its driver's (the default is adaptive). *)
  let s = create_fake ~lock_path ~boot_time_record_path ~policy:Classic host in
  let d =
    Fake_host.create_domain host ~target_kib:(4L * gib) ~dynamic_min_kib:gib
      ~dynamic_max_kib:(4L * gib) ()
  in
  Fake_host.build_domain host d (4L * gib) ;
  Fake_host.unpause host d ;
  Fake_host.advance host 2.0 ;
  (host, s, d)

let target_changes_arrive_at_info () =
  Squeeze_log.set_logger ~level:Squeeze_log.Info collect ;
  ignore (taken ()) ;
  let _host, s, d = host_with_guest () in
  let session = login s "xenopsd" in
  let _id = reserve_memory s session (Int64.add (3L * gib) (512L * mib)) in
  let got = taken () in
  let change =
    List.filter
      (fun (level, target, message) ->
        level = Squeeze_log.Info
        && target = "squeeze::driver"
        && contains message (Printf.sprintf "domain %d: target 4194304 ->" d)
        && contains message "(free memory)")
      got
  in
  Check.is_true
    ~what:
      (Printf.sprintf "a target change of domain %d logged at info, among %d records" d
         (List.length got))
    (change <> []) ;
  Check.is_true ~what:"nothing below info"
    (List.for_all
       (fun (level, _, _) -> level <> Squeeze_log.Debug && level <> Squeeze_log.Trace)
       got) ;
  Squeeze_log.clear ()

let debug_level_brings_the_iterations () =
  Squeeze_log.set_logger ~level:Squeeze_log.Debug collect ;
  let _host, s, _d = host_with_guest () in
  let session = login s "xl" in
  let _ = reserve_memory s session gib in
  let got = taken () in
  Check.is_true ~what:"debug records arrive"
    (List.exists (fun (level, _, _) -> level = Squeeze_log.Debug) got) ;
  Check.is_true ~what:"every target names the library"
    (List.for_all (fun (_, target, _) -> contains target "squeeze") got) ;
  Squeeze_log.clear ()

let a_raising_logger_does_not_stop_delivery () =
  Squeeze_log.set_logger ~level:Squeeze_log.Debug (fun _ _ _ -> failwith "logger broke") ;
  let _host, s, _d = host_with_guest () in
  let session = login s "xl" in
  let _ = reserve_memory s session gib in
  Squeeze_log.flush () ;
  (* The delivering thread survived: the next logger gets records. *)
  Squeeze_log.set_logger ~level:Squeeze_log.Debug collect ;
  let _ = reserve_memory s session gib in
  Check.is_true ~what:"records after a raising logger" (taken () <> []) ;
  Squeeze_log.clear ()

let cleared_means_silent () =
  Squeeze_log.set_logger ~level:Squeeze_log.Trace collect ;
  Squeeze_log.clear () ;
  ignore (taken ()) ;
  let _host, s, _d = host_with_guest () in
  let session = login s "xl" in
  let _ = reserve_memory s session (Int64.add (3L * gib) (512L * mib)) in
  Check.int ~what:"records once cleared" 0 (List.length (taken ())) ;
  Check.int ~what:"records dropped" 0 (Squeeze_log.dropped ())

let records_from_other_threads_arrive () =
  Squeeze_log.set_logger ~level:Squeeze_log.Info collect ;
  let _host, s, d = host_with_guest () in
  let session = login s "xenopsd" in
  let t =
    Thread.create (fun () -> ignore (reserve_memory s session (Int64.add (3L * gib) (512L * mib)))) ()
  in
  Thread.join t ;
  Check.is_true ~what:"a target change logged from another OCaml thread"
    (List.exists
       (fun (_, _, message) -> contains message (Printf.sprintf "domain %d: target" d))
       (taken ())) ;
  Squeeze_log.clear ()

let () =
  Check.run "log"
    [ ("target changes arrive at info", target_changes_arrive_at_info)
    ; ("debug level brings the iterations", debug_level_brings_the_iterations)
    ; ("a raising logger does not stop delivery", a_raising_logger_does_not_stop_delivery)
    ; ("cleared means silent", cleared_means_silent)
    ; ("records from other threads arrive", records_from_other_threads_arrive) ]
