//! Gives the shared library its SONAME, `libringlog.so.<major>` (`libringlog.so.0` for every
//! 0.x release): programs linked against it record that name, so the dynamic linker loads
//! only a library of the same major version. The installer (`src/bin/install.rs`) installs
//! the real file as `libringlog.so.<version>` with the `libringlog.so.<major>` and
//! `libringlog.so` links.

fn main() {
    let major =
        std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libringlog.so.{major}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
