//! `ringlog`: the server and command-line tool.

fn main() {
    println!("ringlog {}", env!("CARGO_PKG_VERSION"));
}
