(* A minimal test runner: named cases, a report line each, exit status 1 if any failed. *)

exception Check_failed of string

let fail fmt = Printf.ksprintf (fun s -> raise (Check_failed s)) fmt

let equal ~what pp expected actual =
  if expected <> actual then fail "%s: expected %s, got %s" what (pp expected) (pp actual)

let int64 ~what = equal ~what Int64.to_string

let int ~what = equal ~what string_of_int

let bool ~what = equal ~what string_of_bool

let is_true ~what b = if not b then fail "%s" what

let ints l = "[" ^ String.concat "; " (List.map string_of_int l) ^ "]"

let run suite cases =
  Printexc.record_backtrace true ;
  let failures =
    List.fold_left
      (fun failures (name, f) ->
        match f () with
        | () ->
            Printf.printf "ok    %s: %s\n%!" suite name ;
            failures
        | exception Check_failed msg ->
            Printf.printf "FAIL  %s: %s\n      %s\n%!" suite name msg ;
            failures + 1
        | exception e ->
            Printf.printf "FAIL  %s: %s\n      unexpected exception %s\n%s%!" suite name
              (Printexc.to_string e) (Printexc.get_backtrace ()) ;
            failures + 1)
      0 cases
  in
  Printf.printf "%s: %d passed, %d failed\n%!" suite (List.length cases - failures) failures ;
  if failures > 0 then exit 1
