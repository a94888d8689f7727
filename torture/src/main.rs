//! chd-torture (being written).
fn main() {}
