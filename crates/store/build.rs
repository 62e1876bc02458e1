fn main() {
    // migrate!() embeds ../../migrations at compile time: a new migration must rebuild this crate.
    println!("cargo:rerun-if-changed=../../migrations");
}
