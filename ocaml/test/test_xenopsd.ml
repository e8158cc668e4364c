(* xenopsd's VM lifecycle and xapi's start-of-day calls, through squeeze.xapi on the fake host.

   Everything the toolstack does is written against xapi-idl's memory interface only
   (Memory_interface, Memory_client.Client), in the order xenopsd's Mem module and its callers
   make the calls; the fake host plays Xen (creating, building and destroying domains), and
   Memory_client.use is the one call that is not squeezed's.

   Sizes in KiB. The host has 8 GiB, of which Xen keeps 256 MiB and domain 0 holds 1 GiB, so
   6.75 GiB are free before any guest; 72 MiB (the host-reserved memory) are always kept free.
   The service runs squeezed's (classic) policy. *)

open Memory_interface
open Sizes

(* Each call has the type xapi-idl's generated client gives it (checked when this compiles). *)
module Calls_have_xapi_idl_types = struct
  open Memory_client.Client

  let _ : debug_info -> string = get_diagnostics

  let _ : debug_info -> string -> session_id = login

  let _ : debug_info -> session_id -> int64 -> reservation_id = reserve_memory

  let _ : debug_info -> session_id -> int64 -> int64 -> reserve_memory_range_result =
    reserve_memory_range

  let _ : debug_info -> session_id -> reservation_id -> unit = delete_reservation

  let _ : debug_info -> session_id -> reservation_id -> int -> unit =
    transfer_reservation_to_domain

  let _ : debug_info -> session_id -> int -> reservation_id = query_reservation_of_domain

  let _ : debug_info -> unit = balance_memory

  let _ : debug_info -> int64 = get_host_reserved_memory

  let _ : debug_info -> int64 = get_host_initial_free_memory

  let _ : debug_info -> domain_zero_policy = get_domain_zero_policy

  let _ : errors -> exn = fun e -> MemoryError e
end

(* The hypervisor and the domain builder. *)
module Xen = struct
  module F = Squeeze_memory.Fake_host

  let host = ref (F.create ~total_kib:(8L * gib) ~xen_kib:(256L * mib) ~dom0_kib:gib ())

  (* A fresh host, and a memory service over it that the calls below go to. *)
  let boot () =
    host := F.create ~total_kib:(8L * gib) ~xen_kib:(256L * mib) ~dom0_kib:gib () ;
    let lock_path = Filename.temp_file "squeeze-xenopsd" ".lock" in
    let boot_time_record_path = Filename.temp_file "squeeze-xenopsd" ".boot" in
    Sys.remove boot_time_record_path ;
    Memory_client.use
      (Squeeze_memory.create_fake ~lock_path ~boot_time_record_path
         ~policy:Squeeze_memory.Classic !host)

  let create ?(stuck = false) ~min ~max kib =
    F.create_domain !host ~stuck ~target_kib:kib ~dynamic_min_kib:min ~dynamic_max_kib:max ()

  (* Builds (or restores) the domain with [kib] and lets it boot. *)
  let build domid kib = F.build_domain !host domid kib ; F.unpause !host domid ; F.advance !host 2.0

  let destroy domid = F.destroy_domain !host domid

  let holds domid = (F.domain !host domid).F.tot_kib

  let maxmem domid = (F.domain !host domid).F.max_kib

  let free () = F.free_mem_kib !host

  let settle () = F.advance !host 5.0
end

(* xenopsd's side: one login per process, a reservation around domain creation that is
   deleted if creation fails, and the reservation cleaned up once the domain is built. *)
module Xenopsd = struct
  let dbg = "xenopsd-test"

  let session = lazy (Memory_client.Client.login dbg "xenopsd")

  let with_reservation min max f =
    let id, kib = Memory_client.Client.reserve_memory_range dbg (Lazy.force session) min max in
    Check.is_true ~what:(Printf.sprintf "reserved %Ld KiB within %Ld..%Ld" kib min max)
      (kib >= min && kib <= max) ;
    match f kib id with
    | v -> v
    | exception e ->
        Memory_client.Client.delete_reservation dbg (Lazy.force session) id ;
        raise e

  (* The domain holds its memory now: the reservation is no longer needed. *)
  let clean_memory_reservation domid =
    match Memory_client.Client.query_reservation_of_domain dbg (Lazy.force session) domid with
    | id -> Memory_client.Client.delete_reservation dbg (Lazy.force session) id
    | exception MemoryError No_reservation -> ()

  (* VM.start: reserve, create the domain, transfer, build, clean. *)
  let start ?stuck ~min ~max () =
    let domid =
      with_reservation min max (fun kib id ->
          let domid = Xen.create ?stuck ~min ~max kib in
          Memory_client.Client.transfer_reservation_to_domain dbg (Lazy.force session) id domid ;
          Check.int64 ~what:"maxmem after the transfer" kib (Xen.maxmem domid) ;
          Xen.build domid kib ;
          domid)
    in
    clean_memory_reservation domid ; domid

  (* VM.shutdown: the reservation (if still there), the domain, then a rebalance. *)
  let shutdown domid =
    clean_memory_reservation domid ;
    Xen.destroy domid ;
    Memory_client.Client.balance_memory dbg ;
    Xen.settle ()

  (* VM.receive_memory on a localhost migration: the incoming domain gets what the source
     holds; once its memory image is restored the source goes. *)
  let migrate_receive ~source ~min ~max =
    let size = Xen.holds source in
    let dest =
      with_reservation size size (fun kib id ->
          let domid = Xen.create ~min ~max kib in
          Memory_client.Client.transfer_reservation_to_domain dbg (Lazy.force session) id domid ;
          Xen.build domid kib ;
          domid)
    in
    clean_memory_reservation dest ;
    shutdown source ;
    dest
end

let memory_error ~what expected f =
  match f () with
  | _ -> Check.fail "%s: expected an error, got none" what
  | exception MemoryError e when e = expected -> ()
  | exception e -> Check.fail "%s: got %s" what (Printexc.to_string e)

let no_reservations ~what =
  let diag = Memory_client.Client.get_diagnostics "test" in
  let has sub =
    let n = String.length sub in
    let rec at i =
      Stdlib.(i + n <= String.length diag) && (String.sub diag i n = sub || at (Stdlib.( + ) i 1))
    in
    at 0
  in
  Check.is_true ~what:(what ^ ": no reservation left") (has "\"sessions\": []")

let start_of_day () =
  Xen.boot () ;
  (* xapi (dbsync, create_misc): host free memory at boot in bytes, the reserved memory in
     KiB, and domain 0's policy in bytes. *)
  Check.int64 ~what:"initial free memory: 7.75 GiB in bytes" 8_321_499_136L
    (Memory_client.Client.get_host_initial_free_memory "dbsync") ;
  Check.int64 ~what:"reserved memory: 72 MiB" slush
    (Memory_client.Client.get_host_reserved_memory "dbsync") ;
  match Memory_client.Client.get_domain_zero_policy "create_misc" with
  | Fixed_size b -> Check.int64 ~what:"domain 0: 1 GiB in bytes" 1_073_741_824L b
  | Auto_balloon _ -> Check.fail "domain 0 is ballooned"

let lifecycle () =
  Xen.boot () ;
  (* vm1 is fixed at 2 GiB: 4.75 GiB left. *)
  let vm1 = Xenopsd.start ~min:(2L * gib) ~max:(2L * gib) () in
  Check.int64 ~what:"vm1 holds" (2L * gib) (Xen.holds vm1) ;
  Check.int64 ~what:"free after vm1" ((4L * gib) + (768L * mib)) (Xen.free ()) ;
  (* vm2 may balloon in 1..4 GiB; with room to spare it gets all 4: 0.75 GiB left. *)
  let vm2 = Xenopsd.start ~min:gib ~max:(4L * gib) () in
  Check.int64 ~what:"vm2 holds" (4L * gib) (Xen.holds vm2) ;
  (* 8 GiB cannot be had even with vm2 at 1 GiB: squeezed's error, with what could be free at
     best (0.75 GiB + the 3 GiB vm2 could give, less the 4 KiB its driver may stop short),
     net of the slush. As squeezed, it found out by ballooning vm2 down to its 1 GiB; nothing
     was created, and the next balance (squeezed's background one) gives vm2 its memory back. *)
  memory_error ~what:"an 8 GiB VM"
    (Cannot_free_this_much_memory (8L * gib, (768L * mib) + (3L * gib) - 4L - slush))
    (fun () -> Xenopsd.start ~min:(8L * gib) ~max:(8L * gib) ()) ;
  Check.is_true ~what:"vm2 at its dynamic-min" (Xen.holds vm2 <= gib + 4L) ;
  no_reservations ~what:"after the failed start" ;
  Memory_client.Client.balance_memory "background" ;
  Xen.settle () ;
  Check.is_true
    ~what:(Printf.sprintf "vm2 back at 4 GiB: %Ld KiB" (Xen.holds vm2))
    (Xen.holds vm2 >= (4L * gib) - 4L) ;
  (* vm3, 2 GiB, needs 1.32 GiB more than is free: vm2 balloons down for it. *)
  let vm3 = Xenopsd.start ~min:(2L * gib) ~max:(2L * gib) () in
  Check.int64 ~what:"vm3 holds" (2L * gib) (Xen.holds vm3) ;
  Check.is_true ~what:"vm2 gave way" (Xen.holds vm2 <= (4L * gib) - (1320L * mib)) ;
  Check.is_true ~what:"the slush is free" (Xen.free () >= slush) ;
  (* Reboot vm1: shut down, then started again as a new domain of the same size. *)
  Xenopsd.shutdown vm1 ;
  let vm1' = Xenopsd.start ~min:(2L * gib) ~max:(2L * gib) () in
  Check.is_true ~what:"a new domain" (vm1' <> vm1) ;
  Check.int64 ~what:"vm1 holds after the reboot" (2L * gib) (Xen.holds vm1') ;
  (* Shut vm3 down: vm2 grows back to its 4 GiB. *)
  Xenopsd.shutdown vm3 ;
  Check.is_true
    ~what:(Printf.sprintf "vm2 back at 4 GiB: %Ld KiB" (Xen.holds vm2))
    (Xen.holds vm2 >= (4L * gib) - 4L) ;
  (* Migrate vm1 to this host: its 2 GiB copy squeezes vm2 again while both exist. *)
  let vm1'' = Xenopsd.migrate_receive ~source:vm1' ~min:(2L * gib) ~max:(2L * gib) in
  Check.int64 ~what:"the received vm1 holds" (2L * gib) (Xen.holds vm1'') ;
  Check.int64 ~what:"the received vm1's maxmem" (2L * gib) (Xen.maxmem vm1'') ;
  Check.is_true
    ~what:(Printf.sprintf "vm2 back at 4 GiB after the migration: %Ld KiB" (Xen.holds vm2))
    (Xen.holds vm2 >= (4L * gib) - 4L) ;
  no_reservations ~what:"after the migration" ;
  (* What is free is what the three guests leave, within the balance tolerance. *)
  Check.is_true
    ~what:(Printf.sprintf "free %Ld KiB is 0.75 GiB" (Xen.free ()))
    (Int64.abs (Xen.free () - (768L * mib)) <= 64L)

let uncooperative_guest () =
  Xen.boot () ;
  (* A 4 GiB VM (1..4 GiB) whose balloon driver never moves: 2.75 GiB left. *)
  let stuck = Xenopsd.start ~stuck:true ~min:gib ~max:(4L * gib) () in
  (* 4 GiB fits only if it shrinks: xenopsd is told which domain refused. *)
  memory_error ~what:"a 4 GiB VM" (Domains_refused_to_cooperate [stuck]) (fun () ->
      Xenopsd.start ~min:(4L * gib) ~max:(4L * gib) ()) ;
  no_reservations ~what:"after the refusal" ;
  (* What the host can give without it still starts. *)
  let small = Xenopsd.start ~min:(2L * gib) ~max:(2L * gib) () in
  Check.int64 ~what:"the 2 GiB VM holds" (2L * gib) (Xen.holds small)

let () =
  Check.run "xenopsd"
    [
      ("xapi's start-of-day calls", start_of_day)
    ; ("start, failed start, squeeze, reboot, shutdown and migrate-receive", lifecycle)
    ; ("a guest that does not balloon is named to xenopsd", uncooperative_guest)
    ]
