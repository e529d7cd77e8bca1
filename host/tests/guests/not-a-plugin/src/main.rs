//! A plain WASI command: a real component, but not a NexusPipe plugin.
fn main() {
    println!("hello from a command component");
}
