(* Squeeze_memory over the fake host: xenopsd's flow, the failure flow and bad input. Sizes in
   KiB; the host has 8 GiB, of which Xen keeps 256 MiB and domain 0 holds 1 GiB, so 6.75 GiB
   are free before any guest. *)

open Squeeze_memory
open Sizes

let free_at_start = (6L * gib) + (768L * mib)

(* A fresh host and a service over it, with its lock and boot-time record in fresh files. The
   tests of squeezed's behaviour name its policy: the service's default is the adaptive one. *)
let setup ?(policy = Classic) () =
  let host = Fake_host.create ~total_kib:(8L * gib) ~xen_kib:(256L * mib) ~dom0_kib:gib () in
  let lock_path = Filename.temp_file "squeeze-test" ".lock" in
  let boot_time_record_path = Filename.temp_file "squeeze-test" ".boot" in
  (* No record yet: the service writes one on first use. *)
  Sys.remove boot_time_record_path ;
  (host, create_fake ~lock_path ~boot_time_record_path ~policy host)

let memory_error ~what expected f =
  match f () with
  | _ -> Check.fail "%s: expected %s, got no error" what (Printexc.to_string (MemoryError expected))
  | exception MemoryError e when e = expected -> ()
  | exception e ->
      Check.fail "%s: expected %s, got %s" what
        (Printexc.to_string (MemoryError expected))
        (Printexc.to_string e)

let internal_error ~what ~status f =
  match f () with
  | _ -> Check.fail "%s: expected Internal_error, got no error" what
  | exception MemoryError (Internal_error msg)
    when String.length msg >= String.length status
         && String.sub msg 0 (String.length status) = status ->
      ()
  | exception e -> Check.fail "%s: expected Internal_error %s..., got %s" what status (Printexc.to_string e)

let xenopsd_flow () =
  let host, s = setup () in
  (* Recorded before any guest: all memory but Xen's, in bytes as squeezed reports it. *)
  let boot_bytes = ((8L * gib) - (256L * mib)) * 1024L in
  Check.int64 ~what:"initial free memory (bytes)" boot_bytes (get_host_initial_free_memory s) ;
  Check.int64 ~what:"host-reserved memory" slush (get_host_reserved_memory s) ;
  (* A running 4 GiB guest that may shrink to 1 GiB leaves 2.75 GiB free. *)
  let d1 =
    Fake_host.create_domain host ~target_kib:(4L * gib) ~dynamic_min_kib:gib
      ~dynamic_max_kib:(4L * gib) ()
  in
  Fake_host.build_domain host d1 (4L * gib) ;
  Fake_host.unpause host d1 ;
  Fake_host.advance host 2.0 ;
  Check.int64 ~what:"free with one guest" ((2L * gib) + (768L * mib)) (Fake_host.free_mem_kib host) ;
  let session = login s "xenopsd" in
  Check.equal ~what:"session id" (fun x -> x) "xenopsd" session ;
  (* 3 GiB at least: the guest must balloon down by more than 300 MiB to make room. *)
  let id, got = reserve_memory_range s session (3L * gib) (4L * gib) in
  Check.int ~what:"reservation id length" 36 (String.length id) ;
  Check.is_true ~what:(Printf.sprintf "reserved %Ld KiB, within 3..4 GiB" got)
    (got >= 3L * gib && got <= 4L * gib) ;
  Check.is_true ~what:"the reservation and the slush are free"
    (Fake_host.free_mem_kib host >= got + slush) ;
  Check.is_true ~what:"the running guest ballooned down"
    ((Fake_host.domain host d1).Fake_host.tot_kib < 4L * gib) ;
  (* The new domain appears, gets the reservation (as its maxmem), is built and boots. *)
  let d2 = Fake_host.create_domain host ~target_kib:got ~dynamic_min_kib:got ~dynamic_max_kib:got () in
  transfer_reservation_to_domain s session id d2 ;
  Check.int64 ~what:"new domain's maxmem" got (Fake_host.domain host d2).Fake_host.max_kib ;
  Fake_host.build_domain host d2 got ;
  Fake_host.unpause host d2 ;
  Fake_host.advance host 2.0 ;
  Check.bool ~what:"new domain booted" true (Fake_host.domain host d2).Fake_host.booted ;
  Check.equal ~what:"query" (fun x -> x) id (query_reservation_of_domain s session d2) ;
  memory_error ~what:"the old guest holds no reservation" No_reservation (fun () ->
      query_reservation_of_domain s session d1) ;
  delete_reservation s session id ;
  memory_error ~what:"deleting twice" (Unknown_reservation id) (fun () ->
      delete_reservation s session id) ;
  (* The record is kept: the same figure with two guests running. *)
  Check.int64 ~what:"initial free memory, later" boot_bytes (get_host_initial_free_memory s) ;
  balance_memory s ;
  let diag = get_diagnostics s in
  Check.is_true ~what:"diagnostics are a JSON object"
    (String.length diag > 2 && diag.[0] = '{')

let failure_flow () =
  let host, s = setup () in
  let session = login s "xl" in
  (* More than the host has: required as asked, free net of the slush. *)
  memory_error ~what:"100 GiB" (Cannot_free_this_much_memory (100L * gib, free_at_start - slush))
    (fun () -> reserve_memory s session (100L * gib)) ;
  (* As in squeezed, a range asks for what the policy would give the new domain: with no other
     guest to share with, all of its 8 GiB maximum. *)
  memory_error ~what:"range of 7..8 GiB"
    (Cannot_free_this_much_memory (8L * gib, free_at_start - slush))
    (fun () -> reserve_memory_range s session (7L * gib) (8L * gib)) ;
  (* Nothing was kept by the failures: exactly what is free net of the slush can be had. *)
  Check.int64 ~what:"free after failures" free_at_start (Fake_host.free_mem_kib host) ;
  let id = reserve_memory s session (free_at_start - slush) in
  Check.int ~what:"id length" 36 (String.length id) ;
  memory_error ~what:"one KiB more" (Cannot_free_this_much_memory (1L, 0L)) (fun () ->
      reserve_memory s session 1L) ;
  (* A transfer to a domain that does not exist is refused and keeps the reservation. *)
  internal_error ~what:"transfer to domain 77" ~status:"SQZ_ERR_INVALID_ARGUMENT" (fun () ->
      transfer_reservation_to_domain s session id 77) ;
  delete_reservation s session id

let stuck_guest () =
  let host, s = setup () in
  (* A 4 GiB guest that could shrink to 1 GiB but whose balloon never moves: 2.75 GiB free. *)
  let stuck =
    Fake_host.create_domain host ~stuck:true ~target_kib:(4L * gib) ~dynamic_min_kib:gib
      ~dynamic_max_kib:(4L * gib) ()
  in
  Fake_host.build_domain host stuck (4L * gib) ;
  Fake_host.unpause host stuck ;
  Fake_host.advance host 2.0 ;
  let session = login s "xenopsd" in
  (* 4 GiB would fit with the guest at its dynamic-min, but it does not give any up. *)
  memory_error ~what:"reserve 4 GiB" (Domains_refused_to_cooperate [stuck]) (fun () ->
      reserve_memory s session (4L * gib)) ;
  Check.int64 ~what:"the stuck guest kept its memory" (4L * gib)
    (Fake_host.domain host stuck).Fake_host.tot_kib ;
  (* Nothing was kept by the failure: what is free net of the slush can still be had. *)
  ignore (reserve_memory s session ((2L * gib) + (768L * mib) - slush))

let adaptive_policy () =
  let host, classic = setup () in
  let lock_path = Filename.temp_file "squeeze-test" ".lock" in
  let boot_time_record_path = Filename.temp_file "squeeze-test" ".boot" in
  (* No policy named: the service's default is the adaptive one. *)
  let s = create_fake ~lock_path ~boot_time_record_path host in
  (* A stuck 4 GiB guest (1..4 GiB) and a 100 MiB/s 2 GiB one (1..2 GiB): 0.75 GiB free. *)
  let stuck =
    Fake_host.create_domain host ~stuck:true ~target_kib:(4L * gib) ~dynamic_min_kib:gib
      ~dynamic_max_kib:(4L * gib) ()
  in
  let fast =
    Fake_host.create_domain host ~rate_kib_per_s:(100L * mib) ~target_kib:(2L * gib)
      ~dynamic_min_kib:gib ~dynamic_max_kib:(2L * gib) ()
  in
  List.iter
    (fun (d, kib) ->
      Fake_host.build_domain host d kib ;
      Fake_host.unpause host d)
    [(stuck, 4L * gib); (fast, 2L * gib)] ;
  Fake_host.advance host 2.0 ;
  let session = login s "xenopsd" in
  (* 2 GiB needs 1.25 GiB and the slush freed; the fast guest has only 1 GiB to give. *)
  memory_error ~what:"reserve 2 GiB" (Domains_refused_to_cooperate [stuck]) (fun () ->
      reserve_memory s session (2L * gib)) ;
  let c = cooperation s stuck in
  Check.is_true ~what:(Printf.sprintf "the stuck guest's score %.2f s is above 0" c.score_s)
    (c.score_s > 0.0) ;
  Check.is_true ~what:"the stuck guest is not moving" (c.concern = Some Not_moving) ;
  Check.is_true ~what:"nothing against the fast guest" ((cooperation s fast).concern = None) ;
  (* What the fast guest can cover alone is served. *)
  ignore (reserve_memory s session (512L * mib)) ;
  (* The classic service keeps no scores. *)
  internal_error ~what:"classic cooperation" ~status:"SQZ_ERR_INVALID_ARGUMENT" (fun () ->
      cooperation classic stuck) ;
  internal_error ~what:"unknown domain" ~status:"SQZ_ERR_INVALID_ARGUMENT" (fun () ->
      cooperation s 4242)

let bad_input () =
  let _host, s = setup () in
  let session = login s "xl" in
  let stranger = "6f1e8a3c-55d2-4c1e-9a8e-0d4b5f6a7b8c" in
  memory_error ~what:"delete unknown" (Unknown_reservation stranger) (fun () ->
      delete_reservation s session stranger) ;
  memory_error ~what:"transfer unknown" (Unknown_reservation stranger) (fun () ->
      transfer_reservation_to_domain s session stranger 0) ;
  memory_error ~what:"delete not-a-uuid" (Unknown_reservation "not-a-uuid") (fun () ->
      delete_reservation s session "not-a-uuid") ;
  memory_error ~what:"delete id with NUL" (Unknown_reservation "a\000b") (fun () ->
      delete_reservation s session "a\000b") ;
  memory_error ~what:"min > max" (Invalid_memory_value (2L * gib)) (fun () ->
      reserve_memory_range s session (2L * gib) gib) ;
  memory_error ~what:"negative size" (Invalid_memory_value (-1L)) (fun () ->
      reserve_memory s session (-1L)) ;
  memory_error ~what:"absurd size" (Invalid_memory_value Int64.max_int) (fun () ->
      reserve_memory s session Int64.max_int) ;
  memory_error ~what:"negative max" (Invalid_memory_value (-5L)) (fun () ->
      reserve_memory_range s session 0L (-5L)) ;
  memory_error ~what:"domain 0 holds no reservation" No_reservation (fun () ->
      query_reservation_of_domain s session 0) ;
  List.iter
    (fun bad ->
      internal_error ~what:(Printf.sprintf "login %S" bad) ~status:"SQZ_ERR_INVALID_ARGUMENT"
        (fun () -> login s bad))
    [""; "../etc"; "a/b"; String.make 129 'x'; "x\000l"] ;
  internal_error ~what:"session with NUL" ~status:"SQZ_ERR_INVALID_ARGUMENT" (fun () ->
      reserve_memory s "x\000l" gib) ;
  (match query_reservation_of_domain s session (-1) with
  | _ -> Check.fail "negative domid accepted"
  | exception Invalid_argument _ -> ()) ;
  (* After all that, the whole free memory can still be reserved. *)
  ignore (reserve_memory s session (free_at_start - slush))

(* On this machine without Xen: the default libsqueeze has no Xen support and says so; one
   built with it finds no hypervisor and says that. Either way an error at once. *)
let xen_without_xen () =
  if Sys.file_exists "/dev/xen/privcmd" then ()
  else
    let has s sub =
      let n = String.length sub in
      let rec at i =
        Stdlib.(i + n <= String.length s) && (String.sub s i n = sub || at (Stdlib.( + ) i 1))
      in
      at 0
    in
    match open_xen ~lock_path:(Filename.temp_file "squeeze-test" ".lock") () with
    | _ -> Check.fail "a service over Xen opened on a machine without Xen"
    | exception MemoryError (Internal_error msg)
      when (has msg "SQZ_ERR_UNSUPPORTED" && has msg "built without Xen support")
           || (has msg "SQZ_ERR_BACKEND"
              && has msg "no Xen hypervisor: /dev/xen/privcmd not available") ->
        ()
    | exception e -> Check.fail "open_xen: unexpected %s" (Printexc.to_string e)

let () =
  Check.run "memory"
    [
      ("xenopsd flow: login, reserve a range, transfer, query, delete", xenopsd_flow)
    ; ("asking for more than the host has is Cannot_free_this_much_memory", failure_flow)
    ; ("a stuck guest is Domains_refused_to_cooperate naming it", stuck_guest)
    ; ("bad input gets squeezed's errors and reserves nothing", bad_input)
    ; ("a service over Xen without Xen is a clear error", xen_without_xen)
    ; ("the adaptive policy names a stuck guest and scores it", adaptive_policy)
    ]
