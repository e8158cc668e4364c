(* Writes the compiler and linker flags that let the stubs find include/squeeze.h and the
   libsqueeze that cargo built, without any machine-specific path in the build files.

   SQUEEZE_INCLUDE_DIR and SQUEEZE_LIB_DIR win when set (the Makefile sets them). Otherwise the
   defaults are the repository's include/ and target/debug/, found relative to this dune
   project: dune runs us inside <project>/_build/<context>/..., so the project is the part of
   the working directory before "/_build/". *)

let build_dir_marker = Filename.dir_sep ^ "_build" ^ Filename.dir_sep

let find_sub s sub =
  let n = String.length s and m = String.length sub in
  let rec go i =
    if i + m > n then None
    else if String.sub s i m = sub then Some i
    else go (i + 1)
  in
  go 0

let project_root () =
  let cwd = Sys.getcwd () in
  match find_sub cwd build_dir_marker with
  | Some i -> String.sub cwd 0 i
  | None ->
      prerr_endline
        "discover: not run from a dune build directory; set SQUEEZE_INCLUDE_DIR and \
         SQUEEZE_LIB_DIR" ;
      exit 2

let absolute base path =
  if Filename.is_relative path then Filename.concat base path else path

(* [default] is a folder of the repository that holds this dune project. *)
let dir_from_env var ~default =
  match Sys.getenv_opt var with
  | Some d when d <> "" -> absolute (project_root ()) d
  | _ -> Filename.concat (Filename.dirname (project_root ())) default

let write file flags =
  let oc = open_out file in
  output_string oc "(" ;
  List.iter (fun f -> Printf.fprintf oc " %S" f) flags ;
  output_string oc " )\n" ;
  close_out oc

(* cargo builds libsqueeze.so, whose SONAME is libsqueeze.so.<major>; programs linked against
   it look for that name at run time, which only an installed library provides. Tests link
   the name next to themselves to the library we built, and put their own folder in their
   run path (written out as link flags: the linker command goes through a shell, so $ORIGIN
   would need quoting that differs between platforms). *)
let link_runtime_name name flags_file =
  let lib_dir = dir_from_env "SQUEEZE_LIB_DIR" ~default:(Filename.concat "target" "debug") in
  let installed = Filename.concat lib_dir name in
  let built = Filename.concat lib_dir "libsqueeze.so" in
  let target = if Sys.file_exists installed then installed else built in
  if not (Sys.file_exists target) then (
    Printf.eprintf "discover: no %s or libsqueeze.so in %s; build it with cargo build\n" name
      lib_dir ;
    exit 1
  ) ;
  if Sys.file_exists name then Sys.remove name ;
  Unix.symlink target name ;
  write flags_file ["-ccopt"; "-Wl,-rpath," ^ Sys.getcwd ()]

let flags () =
  let include_dir = dir_from_env "SQUEEZE_INCLUDE_DIR" ~default:"include" in
  let lib_dir = dir_from_env "SQUEEZE_LIB_DIR" ~default:(Filename.concat "target" "debug") in
  if not (Sys.file_exists (Filename.concat include_dir "squeeze.h")) then (
    Printf.eprintf
      "discover: %s has no squeeze.h; set SQUEEZE_INCLUDE_DIR to the folder that holds it\n"
      include_dir ;
    exit 1
  ) ;
  write "c_flags.sexp" ["-I" ^ include_dir] ;
  (* The rpath lets test executables run from the build tree without LD_LIBRARY_PATH. *)
  write "c_library_flags.sexp"
    ["-L" ^ lib_dir; "-Wl,-rpath," ^ lib_dir; "-lsqueeze"]

let () =
  match Array.to_list Sys.argv with
  | [_] -> flags ()
  | [_; "link"; name; flags_file] -> link_runtime_name name flags_file
  | _ ->
      prerr_endline "usage: discover [link NAME LINK_FLAGS_FILE]" ;
      exit 2
