//! The checked-in C header must be exactly what the pinned cbindgen generates from the
//! sources: this test fails when `include/ringlog.h` is stale.
//! Regenerate it with `RINGLOG_BLESS=1 cargo test -p ringlog-capi --test header`.

use std::path::Path;

#[test]
fn the_checked_in_header_matches_the_sources() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let version = format!("#define RINGLOG_VERSION_STRING \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        generated.contains(&version),
        "cbindgen.toml's RINGLOG_VERSION_STRING is not the crate version: set `{version}`"
    );
    let path = crate_dir.join("include/ringlog.h");
    if std::env::var_os("RINGLOG_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/ringlog.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/ringlog.h is stale: regenerate it with \
         `RINGLOG_BLESS=1 cargo test -p ringlog-capi --test header` and check it in"
    );
}
