//! `cli-app`: a command component (`wasi:cli/run`), not an HTTP handler.

fn main() {
    println!("this component has no wasi:http/incoming-handler export");
}
