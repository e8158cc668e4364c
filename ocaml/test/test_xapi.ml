(* squeeze.xapi (Memory_interface, Memory_client) where xenopsd and xapi depend on squeezed's
   behaviour. Sizes in KiB; the host has 8 GiB, of which Xen keeps 256 MiB and domain 0 holds
   1 GiB, so 6.75 GiB are free before any guest. *)

open Memory_interface
open Sizes

let fresh_host ?domain_zero () =
  let host =
    Squeeze_memory.Fake_host.create ~total_kib:(8L * gib) ~xen_kib:(256L * mib) ~dom0_kib:gib ()
  in
  let lock_path = Filename.temp_file "squeeze-xapi" ".lock" in
  let boot_time_record_path = Filename.temp_file "squeeze-xapi" ".boot" in
  Sys.remove boot_time_record_path ;
  let s =
    Squeeze_memory.create_fake ~lock_path ~boot_time_record_path ~policy:Squeeze_memory.Classic
      ?domain_zero host
  in
  Memory_client.use s ; host

let booted_guest host ~kib =
  let d =
    Squeeze_memory.Fake_host.create_domain host ~target_kib:kib ~dynamic_min_kib:kib
      ~dynamic_max_kib:kib ()
  in
  Squeeze_memory.Fake_host.build_domain host d kib ;
  Squeeze_memory.Fake_host.unpause host d ;
  Squeeze_memory.Fake_host.advance host 2.0 ;
  d

let memory_error ~what expected f =
  match f () with
  | _ -> Check.fail "%s: no error" what
  | exception MemoryError e when e = expected -> ()
  | exception e -> Check.fail "%s: got %s" what (Printexc.to_string e)

let initial_free_memory_is_the_hosts_at_boot () =
  let host = fresh_host () in
  (* A 4 GiB guest runs before xapi asks: the answer is still 8 GiB less Xen's 256 MiB, in
     bytes, as squeezed recorded it when it started. *)
  ignore (booted_guest host ~kib:(4L * gib)) ;
  Check.int64 ~what:"initial free memory (bytes)"
    (((8L * gib) - (256L * mib)) * 1024L)
    (Memory_client.Client.get_host_initial_free_memory "dbsync") ;
  Check.int64 ~what:"host-reserved memory (KiB)" (72L * mib)
    (Memory_client.Client.get_host_reserved_memory "dbsync")

let deleting_twice_or_unknown_is_not_an_error () =
  let _host = fresh_host () in
  let session = Memory_client.Client.login "test" "xenopsd" in
  let id = Memory_client.Client.reserve_memory "test" session gib in
  Memory_client.Client.delete_reservation "test" session id ;
  Memory_client.Client.delete_reservation "test" session id ;
  Memory_client.Client.delete_reservation "test" session "6f1e8a3c-55d2-4c1e-9a8e-0d4b5f6a7b8c" ;
  (* The memory came back: all of the free memory but the slush can be reserved again. *)
  ignore
    (Memory_client.Client.reserve_memory "test" session ((6L * gib) + (768L * mib) - (72L * mib)))

let bad_domids_are_memory_errors () =
  let _host = fresh_host () in
  let session = Memory_client.Client.login "test" "xenopsd" in
  memory_error ~what:"query domain -1" No_reservation (fun () ->
      Memory_client.Client.query_reservation_of_domain "test" session (-1)) ;
  let id = Memory_client.Client.reserve_memory "test" session gib in
  memory_error ~what:"transfer to domain -1" (Internal_error "domain -1 does not exist")
    (fun () -> Memory_client.Client.transfer_reservation_to_domain "test" session id (-1)) ;
  (match Memory_client.Client.transfer_reservation_to_domain "test" session id 4242 with
  | () -> Check.fail "transfer to a domain that does not exist"
  | exception MemoryError (Internal_error _) -> ()) ;
  (* The reservation is still there after both refusals. *)
  Memory_client.Client.delete_reservation "test" session id

let errors_are_squeezed_constructors () =
  let _host = fresh_host () in
  let session = Memory_client.Client.login "test" "xl" in
  (* A handler written for xapi-idl's exception catches the service's failures. *)
  memory_error ~what:"100 GiB"
    (Cannot_free_this_much_memory (100L * gib, (6L * gib) + (768L * mib) - (72L * mib)))
    (fun () -> Memory_client.Client.reserve_memory "test" session (100L * gib)) ;
  memory_error ~what:"min above max" (Invalid_memory_value (2L * gib)) (fun () ->
      Memory_client.Client.reserve_memory_range "test" session (2L * gib) gib)

let balance_memory_does_not_raise () =
  let _host = fresh_host () in
  let logged = ref [] in
  Squeeze_log.set_logger ~level:Squeeze_log.Warn (fun _ target msg ->
      if target = "squeeze.xapi" then logged := msg :: !logged) ;
  (* A service whose lock file cannot be taken (its folder is a file) fails every call. *)
  let host =
    Squeeze_memory.Fake_host.create ~total_kib:(8L * gib) ~xen_kib:(256L * mib) ~dom0_kib:gib ()
  in
  let not_a_folder = Filename.temp_file "squeeze-xapi" ".file" in
  let broken =
    Squeeze_memory.create_fake ~lock_path:(Filename.concat not_a_folder "host.lock")
      ~boot_time_record_path:(Filename.concat not_a_folder "boot") host
  in
  Memory_client.use broken ;
  (match Memory_client.Client.reserve_memory "test" "xenopsd" gib with
  | _ -> Check.fail "a service without its lock file reserved memory"
  | exception MemoryError (Internal_error _) -> ()) ;
  Memory_client.Client.balance_memory "after-destroy" ;
  Squeeze_log.flush () ;
  Squeeze_log.clear () ;
  match !logged with
  | [msg] ->
      Check.is_true ~what:("logged: " ^ msg)
        (String.length msg > 30 && String.sub msg 0 30 = "after-destroy: balance_memory ")
  | l -> Check.fail "expected one record, got %d" (List.length l)

(* Runs first, before any Memory_client.use: on this machine without Xen the default service
   cannot be opened, every call says why, and nothing is kept from the failed attempt. *)
let without_xen_every_call_fails_clearly () =
  if Sys.file_exists "/dev/xen/privcmd" then ()
  else
    List.iter
      (fun (what, call) ->
        match call () with
        | () -> Check.fail "%s: answered without Xen" what
        | exception MemoryError (Internal_error msg)
          when String.length msg > 8 && String.sub msg 0 8 = "SQZ_ERR_" ->
            ()
        | exception e -> Check.fail "%s: %s" what (Printexc.to_string e))
      [
        ("login", fun () -> ignore (Memory_client.Client.login "test" "xenopsd"))
      ; ("login again", fun () -> ignore (Memory_client.Client.login "test" "xenopsd"))
      ; ("initial free memory", fun () ->
            ignore (Memory_client.Client.get_host_initial_free_memory "dbsync"))
      ]

let domain_zero_policy_in_bytes () =
  let _host = fresh_host () in
  let pp = function
    | Fixed_size b -> Printf.sprintf "Fixed_size %Ld" b
    | Auto_balloon (a, b) -> Printf.sprintf "Auto_balloon (%Ld, %Ld)" a b
  in
  (* Domain 0 holds 1 GiB: 1073741824 bytes. *)
  Check.equal ~what:"default" pp (Fixed_size 1_073_741_824L)
    (Memory_client.Client.get_domain_zero_policy "create_misc") ;
  let _host = fresh_host ~domain_zero:(Squeeze_memory.Balloon (512L * mib, None)) () in
  Check.equal ~what:"ballooned, maximum what it holds" pp
    (Auto_balloon (536_870_912L, 1_073_741_824L))
    (Memory_client.Client.get_domain_zero_policy "create_misc") ;
  let _host = fresh_host ~domain_zero:(Squeeze_memory.Balloon (512L * mib, Some (2L * gib))) () in
  Check.equal ~what:"ballooned up to 2 GiB" pp
    (Auto_balloon (536_870_912L, 2_147_483_648L))
    (Memory_client.Client.get_domain_zero_policy "create_misc") ;
  memory_error ~what:"min above max" (Invalid_memory_value (2L * gib)) (fun () ->
      fresh_host ~domain_zero:(Squeeze_memory.Balloon (2L * gib, Some gib)) ())

let () =
  Check.run "xapi"
    [
      ("without Xen, every call fails with Internal_error", without_xen_every_call_fails_clearly)
    ; ("domain 0's policy is answered in bytes, as squeezed", domain_zero_policy_in_bytes)
    ; ( "initial free memory is the host's at boot, in bytes"
      , initial_free_memory_is_the_hosts_at_boot )
    ; ( "deleting an unknown or deleted reservation is not an error"
      , deleting_twice_or_unknown_is_not_an_error )
    ; ("a bad domid is a MemoryError", bad_domids_are_memory_errors)
    ; ("failures are xapi-idl's MemoryError constructors", errors_are_squeezed_constructors)
    ; ("balance_memory logs a failure and does not raise", balance_memory_does_not_raise)
    ]
