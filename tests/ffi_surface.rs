//! Checks on the C ABI's surface:
//! - `include/squeeze.h` is exactly what cbindgen generates from `src/ffi` now;
//! - every `extern "C"` function in `src/ffi` runs its whole body inside the panic guard, and
//!   nothing outside `src/ffi` exports a symbol;
//! - the `sqz_*` symbols the shared library exports are exactly the functions in the header.
//!
//! `SQUEEZE_BLESS=1 cargo test --test ffi_surface` rewrites the header after an intended change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate_header() -> String {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn the_checked_in_header_is_what_cbindgen_generates_now() {
    let path = root().join("include/squeeze.h");
    let fresh = generate_header();
    if std::env::var_os("SQUEEZE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != fresh {
        let line = checked_in
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| checked_in.lines().count().min(fresh.lines().count()) + 1);
        panic!(
            "include/squeeze.h differs from what cbindgen generates from src/ffi (first \
             difference at line {line}); run `make header` and commit the result"
        );
    }
}

/// The functions the header declares: `<type> sqz_name(` at the start of a declaration.
fn header_functions() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("include/squeeze.h")).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("//") || line.starts_with(' ') || line.starts_with('#') {
            continue;
        }
        if line.starts_with("typedef") {
            continue;
        }
        if let Some(paren) = line.find('(') {
            let head = &line[..paren];
            if let Some(name) = head.split([' ', '*']).next_back() {
                if name.starts_with("sqz_") {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `#[no_mangle]`, `#[export_name = ..]`, or either inside `#[unsafe(..)]`.
fn has_no_mangle(attrs: &[syn::Attribute]) -> bool {
    let exports = |p: &syn::Path| p.is_ident("no_mangle") || p.is_ident("export_name");
    attrs.iter().any(|a| match &a.meta {
        syn::Meta::Path(p) => exports(p),
        syn::Meta::NameValue(nv) => exports(&nv.path),
        syn::Meta::List(l) => {
            let inner = l.tokens.to_string();
            exports(&l.path) || inner.contains("no_mangle") || inner.contains("export_name")
        }
    })
}

/// Every function declared `extern "C"` in a file, with whether it is exported.
fn extern_c_fns(file: &syn::File) -> Vec<(&syn::ItemFn, bool)> {
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Fn(f) => Some(f),
            _ => None,
        })
        .filter(|f| {
            f.sig
                .abi
                .as_ref()
                .is_some_and(|abi| abi.name.as_ref().is_none_or(|n| n.value() == "C"))
        })
        .map(|f| (f, has_no_mangle(&f.attrs)))
        .collect()
}

/// True when the body is exactly one expression: a call to `guard::status` or `guard::value`.
fn body_is_guarded(f: &syn::ItemFn) -> bool {
    let stmts = &f.block.stmts;
    if stmts.len() != 1 {
        return false;
    }
    let expr = match &stmts[0] {
        syn::Stmt::Expr(e, None) => e,
        _ => return false,
    };
    let syn::Expr::Call(call) = expr else {
        return false;
    };
    let syn::Expr::Path(p) = &*call.func else {
        return false;
    };
    let segments: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    segments.len() >= 2
        && segments[segments.len() - 2] == "guard"
        && matches!(segments[segments.len() - 1].as_str(), "status" | "value")
}

#[test]
fn every_extern_c_function_runs_inside_the_panic_guard() {
    let mut unguarded = Vec::new();
    let mut exported = 0;
    for path in rust_files(&root().join("src/ffi")) {
        let file = syn::parse_file(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (f, is_exported) in extern_c_fns(&file) {
            exported += usize::from(is_exported);
            if !body_is_guarded(f) {
                unguarded.push(format!("{}: {}", path.display(), f.sig.ident));
            }
        }
    }
    assert!(
        exported > 30,
        "found only {exported} exported functions: is the scan broken?"
    );
    assert!(
        unguarded.is_empty(),
        "these extern \"C\" functions do not run their whole body through guard::status or \
         guard::value: {unguarded:?}"
    );
}

/// The V1 sizes frozen through `frozen_v1!` in `file`: struct name → size.
fn frozen_v1_sizes(file: &syn::File) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for item in &file.items {
        let syn::Item::Macro(m) = item else { continue };
        if m.mac.path.segments.last().map(|s| s.ident.to_string()) != Some("frozen_v1".into()) {
            continue;
        }
        let tokens = m.mac.tokens.to_string();
        let tokens: Vec<&str> = tokens.split_whitespace().collect();
        // `NAME = sqz_struct [size] { .. }`, after the doc attributes.
        let joined = tokens.join(" ").replace("[ ", "[").replace(" ]", "]");
        let tokens: Vec<&str> = joined.split_whitespace().collect();
        for w in tokens.windows(4) {
            if w[1] == "=" && w[2].starts_with("sqz_") && w[3].starts_with('[') {
                let size = w[3].trim_start_matches('[').trim_end_matches(']');
                sizes.insert(w[2].to_string(), size.parse().unwrap());
            }
        }
    }
    sizes
}

#[test]
fn every_versioned_struct_has_its_v1_size_frozen_as_a_number() {
    let mut versioned = BTreeSet::new();
    let mut frozen = BTreeMap::new();
    let mut computed = Vec::new();
    for path in rust_files(&root().join("src/ffi")) {
        let file = syn::parse_file(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for item in &file.items {
            match item {
                syn::Item::Struct(st) => {
                    let has_size = st
                        .fields
                        .iter()
                        .any(|f| f.ident.as_ref().is_some_and(|i| i == "struct_size"));
                    if has_size {
                        versioned.insert(st.ident.to_string());
                    }
                }
                // A V1 size written as an expression (`size_of` the current struct) moves
                // with the first appended field.
                syn::Item::Const(c) if c.ident.to_string().ends_with("_SIZE_V1") => {
                    computed.push(format!("{}: {}", path.display(), c.ident));
                }
                _ => {}
            }
        }
        frozen.extend(frozen_v1_sizes(&file));
    }
    assert!(
        versioned.len() >= 6,
        "found only {versioned:?}: is the scan broken?"
    );
    assert!(
        computed.is_empty(),
        "V1 sizes not frozen through frozen_v1!: {computed:?}"
    );
    let missing: Vec<_> = versioned
        .iter()
        .filter(|s| !frozen.contains_key(*s))
        .collect();
    assert!(missing.is_empty(), "no frozen V1 size for {missing:?}");
    // The element structs passed with a size argument are frozen too.
    for s in ["sqz_domain", "sqz_domain_info"] {
        assert!(frozen.contains_key(s), "{s} has no frozen V1 size");
    }
}

#[test]
fn the_guard_check_catches_an_unguarded_function() {
    // The check above must be able to fail: feed it the shapes it has to refuse.
    let bad = [
        "#[no_mangle] pub extern \"C\" fn sqz_x() -> i32 { 0 }",
        "#[no_mangle] pub extern \"C\" fn sqz_x() -> i32 { let a = 1; guard::status(|| Ok(())) }",
        "#[no_mangle] pub extern \"C\" fn sqz_x() -> i32 { other::status(|| Ok(())) }",
        "#[no_mangle] pub extern \"C\" fn sqz_x() -> i32 { guard::status(|| Ok(())); }",
        "unsafe extern \"C\" fn cb(ctx: *mut c_void) -> f64 { 1.0 }",
    ];
    for src in bad {
        let file = syn::parse_file(src).unwrap();
        let fns = extern_c_fns(&file);
        assert_eq!(fns.len(), 1, "{src}");
        assert!(!body_is_guarded(fns[0].0), "accepted: {src}");
    }
    let good = syn::parse_file(
        "#[no_mangle] pub unsafe extern \"C\" fn sqz_x() -> i32 { guard::status(|| Ok(())) }",
    )
    .unwrap();
    assert!(body_is_guarded(extern_c_fns(&good)[0].0));
}

#[test]
fn nothing_outside_src_ffi_exports_a_symbol() {
    for path in rust_files(&root().join("src")) {
        if path.starts_with(root().join("src/ffi")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("no_mangle") && !text.contains("export_name"),
            "{} exports a symbol; the C ABI lives in src/ffi only",
            path.display()
        );
    }
}

/// Builds the shared library (cargo test does not) and returns its path.
fn shared_library() -> PathBuf {
    let cargo = env!("CARGO");
    let status = Command::new(cargo)
        .args(["build", "--lib", "--quiet"])
        .current_dir(root())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build --lib failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("debug/libsqueeze.so")
}

#[test]
#[cfg(target_os = "linux")]
fn the_library_exports_exactly_the_functions_in_the_header() {
    let lib = shared_library();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) is installed");
    assert!(out.status.success(), "nm failed on {}", lib.display());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("sqz_"))
        .map(str::to_string)
        .collect();
    let declared = header_functions();
    assert!(
        declared.len() > 30,
        "parsed only {} functions from the header",
        declared.len()
    );
    let missing: Vec<_> = declared.difference(&exported).collect();
    let undeclared: Vec<_> = exported.difference(&declared).collect();
    assert!(
        missing.is_empty() && undeclared.is_empty(),
        "declared but not exported: {missing:?}; exported but not declared: {undeclared:?}"
    );
}

#[test]
#[cfg(target_os = "linux")]
fn the_shared_library_carries_a_soname_with_the_major_version() {
    let lib = shared_library();
    let out = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .expect("readelf (binutils) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("[libsqueeze.so.{}]", env!("CARGO_PKG_VERSION_MAJOR"));
    assert!(
        text.lines()
            .any(|l| l.contains("SONAME") && l.contains(&want)),
        "no SONAME {want} in:\n{text}"
    );
}
