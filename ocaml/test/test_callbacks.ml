(* The binding itself: exceptions raised in io closures, errors from the library, sizes above
   2^32 KiB, and the helpers that live on the OCaml side. *)

open Squeeze

exception Xenstore_gone of string * int ref

(* One guest at 3000 KiB (dynamic range 1000..3000) on a host with nothing free; freeing
   1000 KiB at 100 KiB/s takes about 100 ticks, so every closure is called many times. *)
let one_guest () =
  Sim.create ~free_kib:0L [(domain_make 1 true 1000L 3000L 3000L 3000L 3000L 0L, 100L, Sim.Ideal)]

(* [io] with its closures counted; the one named [faulty] raises [exn] on its [nth] call.
   [after] counts closure calls that came after the raise. *)
type rig = {io: io; after: int ref; raised: bool ref}

(* The source line of the raise below, to find it in backtraces. *)
let raise_line = ref 0

let rig ?(faulty = "") ?(nth = 1) ?(exn = Exit) io =
  let after = ref 0 and raised = ref false and calls = Hashtbl.create 8 in
  let wrap name f x =
    if !raised then incr after ;
    let n = 1 + Option.value ~default:0 (Hashtbl.find_opt calls name) in
    Hashtbl.replace calls name n ;
    if name = faulty && n = nth then (
      raised := true ;
      raise_line := __LINE__ ; raise exn
    ) ;
    f x
  in
  {
    io=
      {
        io with
        make_host= wrap "make_host" io.make_host
      ; domain_setmaxmem= (fun d k -> wrap "domain_setmaxmem" (fun () -> io.domain_setmaxmem d k) ())
      ; execute_action= wrap "execute_action" io.execute_action
      ; wait= wrap "wait" io.wait
      ; gettimeofday= wrap "gettimeofday" io.gettimeofday
      }
  ; after
  ; raised
  }

let free_1000 r = change_host_free_memory r.io 1000L (fun free -> free >= 1000L)

(* Runs [f]; checks it raised exactly [expected] (the same value, not a copy), that the
   library called nothing after the raise, and that the backtrace still shows the line that
   raised, rather than starting where the C stubs re-raised it. *)
let expect_same_exception r expected f =
  match f r with
  | _ -> Check.fail "expected %s, nothing was raised" (Printexc.to_string expected)
  | exception e ->
      let bt = Printexc.get_backtrace () in
      Check.is_true
        ~what:(Printf.sprintf "raised %s is the closure's %s" (Printexc.to_string e)
                 (Printexc.to_string expected))
        (e == expected) ;
      Check.int ~what:"closure calls after the raise" 0 !(r.after) ;
      let rec contains s sub i =
        i + String.length sub <= String.length s
        && (String.sub s i (String.length sub) = sub || contains s sub (i + 1))
      in
      Check.is_true
        ~what:(Printf.sprintf "backtrace shows the raise at line %d:\n%s" !raise_line bt)
        (contains bt (Printf.sprintf "line %d" !raise_line) 0)

let closure_exception name nth () =
  let sim = one_guest () in
  let exn = Xenstore_gone (name, ref nth) in
  let r = rig ~faulty:name ~nth ~exn (Sim.io ~target_host_free_mem_kib:1000L sim) in
  expect_same_exception r exn free_1000 ;
  Check.is_true ~what:"the closure did raise" !(r.raised) ;
  (* The library kept nothing broken: the same host now frees its memory. *)
  free_1000 (rig (Sim.io ~target_host_free_mem_kib:1000L sim)) ;
  Check.is_true ~what:"1000 KiB free afterwards" (sim.Sim.free_kib >= 1000L)

let success_condition_exception () =
  let sim = one_guest () in
  let io = Sim.io ~target_host_free_mem_kib:1000L sim in
  let exn = Xenstore_gone ("success", ref 0) in
  match change_host_free_memory io 1000L (fun _ -> raise exn) with
  | () -> Check.fail "expected the success condition's exception"
  | exception e -> Check.is_true ~what:"same exception" (e == exn)

let exception_in_free_memory_range () =
  let sim = one_guest () in
  let exn = Xenstore_gone ("execute_action", ref 3) in
  let r = rig ~faulty:"execute_action" ~nth:3 ~exn (Sim.io ~target_host_free_mem_kib:0L sim) in
  expect_same_exception r exn (fun r -> free_memory_range r.io 500L 1000L)

let exception_in_is_host_memory_unbalanced () =
  let sim = one_guest () in
  let r = rig ~faulty:"make_host" ~exn:Not_found (Sim.io ~target_host_free_mem_kib:0L sim) in
  expect_same_exception r Not_found (fun r -> is_host_memory_unbalanced r.io)

let balance_memory_swallows_like_squeezed () =
  let sim = one_guest () in
  let r = rig ~faulty:"make_host" ~exn:Not_found (Sim.io ~target_host_free_mem_kib:0L sim) in
  balance_memory r.io ;
  Check.is_true ~what:"the closure did raise" !(r.raised)

let expect_error kind f =
  match f () with
  | _ -> Check.fail "expected Squeeze_error"
  | exception Squeeze_error (k, msg) ->
      Check.is_true ~what:("error kind, message: " ^ msg) (k = kind) ;
      Check.is_true ~what:"the message says something" (String.length msg > 0)

let negative_sizes_are_refused () =
  let io = Sim.io ~target_host_free_mem_kib:0L (one_guest ()) in
  expect_error Invalid_memory_value (fun () ->
      change_host_free_memory io (-1L) (fun _ -> true))

let min_above_max_is_refused () =
  let io = Sim.io ~target_host_free_mem_kib:0L (one_guest ()) in
  expect_error Invalid_memory_value (fun () -> free_memory_range io 2000L 1000L)

let clock_going_backwards_is_a_backend_failure () =
  let sim = one_guest () in
  let t = ref 100. in
  let io =
    {
      (Sim.io ~target_host_free_mem_kib:1000L sim) with
      gettimeofday=
        (fun () ->
          t := !t -. 1. ;
          !t)
    }
  in
  expect_error Backend_failure (fun () -> change_host_free_memory io 1000L (fun _ -> false))

let clock_returning_nan_is_a_backend_failure () =
  let io = {(Sim.io ~target_host_free_mem_kib:1000L (one_guest ())) with gettimeofday= (fun () -> nan)} in
  expect_error Backend_failure (fun () -> change_host_free_memory io 1000L (fun _ -> false))

let domid_beyond_32_bits_is_refused () =
  let big = 1 lsl 40 in
  let host =
    make_host ~free_mem_kib:0L
      ~domains:(DomainSet.singleton (domain_make big true 1000L 3000L 3000L 3000L 3000L 0L))
  in
  let io = {(Sim.io ~target_host_free_mem_kib:1000L (one_guest ())) with make_host= (fun () -> ("", host))} in
  match change_host_free_memory io 1000L (fun _ -> true) with
  | () -> Check.fail "expected Invalid_argument"
  | exception Invalid_argument _ -> ()

let a_negative_size_in_the_snapshot_is_refused () =
  let bad = domain_make 7 true 1000L 3000L 3000L (-3000L) 3000L 0L in
  let host = make_host ~free_mem_kib:0L ~domains:(DomainSet.singleton bad) in
  let io = {(Sim.io ~target_host_free_mem_kib:1000L (one_guest ())) with make_host= (fun () -> ("", host))} in
  match change_host_free_memory io 1000L (fun _ -> true) with
  | () -> Check.fail "expected Squeeze_error"
  | exception Squeeze_error (Backend_failure, msg) ->
      let has sub =
        let n = String.length sub in
        let rec go i = i + n <= String.length msg && (String.sub msg i n = sub || go (i + 1)) in
        go 0
      in
      Check.is_true ~what:("the message names the domain: " ^ msg) (has "domain 7")

let free_memory_range_sizes_the_new_domain () =
  (* One guest at 3000 KiB (dynamic range 1000..3000), nothing free, no slush, and a new
     domain of 500..1000 KiB. Were it running, the surplus of 2000 KiB over ranges 2000 + 500
     gives γ = 0.8, so it would get 500 + 0.8 x 500 = 900 KiB. Those 900 KiB are freed (the
     guest goes to 3000 - 900 = 2100) and the new domain may have all of them. *)
  let sim = one_guest () in
  let got = free_memory_range (Sim.io ~target_host_free_mem_kib:0L sim) 500L 1000L in
  Check.int64 ~what:"size for the new domain" 900L got ;
  Check.int64 ~what:"guest target" 2100L (Sim.domain sim 1).target_kib ;
  Check.int64 ~what:"host free" 900L sim.Sim.free_kib

let calls_from_inside_a_callback () =
  (* While one host frees memory, its wait closure asks about a second host (1000 KiB free, a
     guest that could grow): the nested call works, and so does the outer one. *)
  let other =
    Sim.create ~free_kib:1000L [(domain_make 2 true 1000L 1500L 3000L 1500L 1500L 4L, 100L, Sim.Ideal)]
  in
  let other_io = Sim.io ~target_host_free_mem_kib:0L ~free_memory_tolerance_kib:32L other in
  let answers = ref [] in
  let sim = one_guest () in
  let io = Sim.io ~target_host_free_mem_kib:1000L sim in
  let io =
    {io with wait= (fun s -> answers := is_host_memory_unbalanced other_io :: !answers ; io.wait s)}
  in
  free_1000 (rig io) ;
  Check.is_true ~what:"1000 KiB free" (sim.Sim.free_kib >= 1000L) ;
  Check.is_true ~what:"the nested call ran" (!answers <> []) ;
  Check.is_true ~what:"and always found the other host unbalanced" (List.for_all Fun.id !answers)

let tib = Int64.shift_left 1L 30 (* in KiB *)

let sizes_above_4_tib_pass_intact () =
  (* A guest of 8 TiB that may go down to 4 TiB (2^32 KiB) frees 4 TiB - 7 KiB: the surplus
     is 7 KiB, so γ = 7 / 2^32 and its target is exactly 2^32 + 7 KiB. *)
  let four = Int64.mul 4L tib and eight = Int64.mul 8L tib in
  let required = Int64.sub four 7L in
  let sim =
    Sim.create ~free_kib:0L
      [(domain_make 3 true four eight eight eight eight 0L, Int64.shift_left 1L 40, Sim.Ideal)]
  in
  let maxmems = ref [] in
  let io = Sim.io ~target_host_free_mem_kib:required sim in
  let io = {io with domain_setmaxmem= (fun d k -> maxmems := k :: !maxmems ; io.domain_setmaxmem d k)} in
  change_host_free_memory io required (fun free -> free >= required) ;
  Check.int64 ~what:"target" (Int64.add four 7L) (Sim.domain sim 3).target_kib ;
  Check.int64 ~what:"host free" required sim.Sim.free_kib ;
  Check.int64 ~what:"last maxmem set" (Int64.add four 7L) (List.hd !maxmems) ;
  (* A 32 TiB empty host and a new domain of 4 TiB + 1 KiB .. 16 TiB: it gets all 16 TiB. *)
  let empty = Sim.create ~free_kib:(Int64.mul 32L tib) [] in
  Check.int64 ~what:"free_memory_range" (Int64.mul 16L tib)
    (free_memory_range (Sim.io ~target_host_free_mem_kib:0L empty) (Int64.add four 1L)
       (Int64.mul 16L tib))

let unbalanced_until_balanced () =
  (* 1000 KiB free and a guest at 1500 that could grow to 3000: unbalanced. The surplus is
     1000 free + (1500 - 1000 - 2 x 4) freeable = 1492 KiB over a range of 2000, so the target
     is 1000 + 1492 = 2492; the driver settles 4 KiB short at 2488, leaving 1000 - 988 = 12 KiB
     free, within the 32 KiB tolerance. After that nothing would change. *)
  let sim =
    Sim.create ~free_kib:1000L [(domain_make 1 true 1000L 1500L 3000L 1500L 1500L 4L, 100L, Sim.Ideal)]
  in
  let io = Sim.io ~target_host_free_mem_kib:0L ~free_memory_tolerance_kib:32L sim in
  Check.bool ~what:"unbalanced before" true (is_host_memory_unbalanced io) ;
  balance_memory io ;
  Check.int64 ~what:"target" 2492L (Sim.domain sim 1).target_kib ;
  Check.int64 ~what:"host free" 12L sim.Sim.free_kib ;
  Check.bool ~what:"unbalanced after" false (is_host_memory_unbalanced io)

let helpers () =
  Check.bool ~what:"4 KiB off, inaccuracy 4" true (has_hit_target 4L 1504L 1500L) ;
  Check.bool ~what:"5 KiB off, inaccuracy 4" false (has_hit_target 4L 1495L 1500L) ;
  let d = domain_make 1 true 1000L 1500L 2000L 1500L 1500L 4L in
  Check.int64 ~what:"min_freeable holds back 2 x 4 KiB" 492L (min_freeable d) ;
  Check.int64 ~what:"min_freeable without compensation" 500L
    (min_freeable ~fistpoints:[DisableInaccuracyCompensation] d) ;
  Check.int64 ~what:"min_freeable below dynamic-min" 0L
    (min_freeable {d with memory_actual_kib= 900L}) ;
  let io = Sim.io ~target_host_free_mem_kib:1000L ~free_memory_tolerance_kib:512L (one_guest ()) in
  Check.bool ~what:"1511 KiB free is balanced" true (is_balanced io 1511L) ;
  Check.bool ~what:"1512 KiB free is not" false (is_balanced io 1512L) ;
  Check.int64 ~what:"operators" 7L (( -* ) (( +* ) 2L (( ** ) 3L 4L)) 7L)

let read_lines file =
  let ic = open_in file in
  let rec go acc = match input_line ic with l -> go (l :: acc) | exception End_of_file -> List.rev acc in
  let lines = go [] in
  close_in ic ; lines

let gnuplot () =
  let dir = Filename.get_temp_dir_name () in
  let stem = Filename.concat dir (Printf.sprintf "squeeze-plot-%d" (Unix.getpid ())) in
  let host =
    make_host ~free_mem_kib:250L
      ~domains:
        (DomainSet.of_list
           [ domain_make 2 true 1000L 1400L 2000L 1450L 1500L 4L
           ; domain_make 1 true 500L 700L 900L 800L 900L 4L ])
  in
  let cols = Gnuplot.[Target; Memory_actual] in
  let oc = open_out (stem ^ ".dat") in
  Gnuplot.write_header oc cols ;
  Gnuplot.write_row oc host cols 1.5 ;
  close_out oc ;
  Gnuplot.write_gp stem host cols ;
  (* Columns per domain in a fixed order (actual, then target), domains by domid. *)
  (match read_lines (stem ^ ".dat") with
  | [header; row] ->
      Check.is_true ~what:"header is a comment" (header.[0] = '#') ;
      Check.equal ~what:"row" Fun.id "1.50 250 800 700 1450 1400" row
  | l -> Check.fail "expected 2 lines, got %d" (List.length l)) ;
  let script = String.concat "\n" (read_lines (stem ^ ".gp")) in
  List.iter
    (fun col ->
      let needle = Printf.sprintf "using 1:%d " col in
      let rec has i =
        i + String.length needle <= String.length script
        && (String.sub script i (String.length needle) = needle || has (i + 1))
      in
      Check.is_true ~what:("script plots column " ^ string_of_int col) (has 0))
    [2; 3; 4; 5; 6] ;
  Sys.remove (stem ^ ".dat") ;
  Sys.remove (stem ^ ".gp")

let () =
  Check.run "binding"
    [
      ("exception in make_host comes out unchanged", closure_exception "make_host" 3)
    ; ("exception in domain_setmaxmem comes out unchanged", closure_exception "domain_setmaxmem" 2)
    ; ("exception in execute_action comes out unchanged", closure_exception "execute_action" 1)
    ; ("exception in wait comes out unchanged", closure_exception "wait" 5)
    ; ("exception in gettimeofday comes out unchanged", closure_exception "gettimeofday" 4)
    ; ("exception in the success condition comes out unchanged", success_condition_exception)
    ; ("exception inside free_memory_range comes out unchanged", exception_in_free_memory_range)
    ; ( "exception inside is_host_memory_unbalanced comes out unchanged"
      , exception_in_is_host_memory_unbalanced )
    ; ("balance_memory swallows failures, as squeezed's does", balance_memory_swallows_like_squeezed)
    ; ("a negative size is Invalid_memory_value", negative_sizes_are_refused)
    ; ("free_memory_range with min > max is Invalid_memory_value", min_above_max_is_refused)
    ; ("a clock going backwards is a backend failure", clock_going_backwards_is_a_backend_failure)
    ; ("a clock returning NaN is a backend failure", clock_returning_nan_is_a_backend_failure)
    ; ("a domid beyond 32 bits is Invalid_argument", domid_beyond_32_bits_is_refused)
    ; ("a negative size in a snapshot is a backend failure naming the domain", a_negative_size_in_the_snapshot_is_refused)
    ; ("free_memory_range gives a new domain its proportional share", free_memory_range_sizes_the_new_domain)
    ; ("calls into the library from inside a callback work", calls_from_inside_a_callback)
    ; ("sizes above 4 TiB (2^32 KiB) pass through intact", sizes_above_4_tib_pass_intact)
    ; ("a host is unbalanced until balance_memory hands memory out", unbalanced_until_balanced)
    ; ("has_hit_target, min_freeable, is_balanced, operators", helpers)
    ; ("Gnuplot writes rows and a script that agree", gnuplot)
    ]
