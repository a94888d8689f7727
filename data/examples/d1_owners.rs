use chd_data::Ring;
fn main() {
    let mut r = Ring::new(&[0, 1, 2, 3], 3, 1024).unwrap();
    let steps: Vec<(&str, u64, u64)> = vec![("rep", 0, 4), ("rem", 1, 0), ("add", 5, 0), ("add", 6, 0), ("rem", 5, 0), ("rep", 6, 7), ("add", 8, 0),
      ("rep", 8, 9), ("rem", 9, 0), ("rem", 4, 0), ("rep", 2, 10), ("add", 11, 0), ("rep", 11, 12)];
    let key = std::env::args().nth(1).unwrap_or("k13".into());
    let p = r.partition_of(key.as_bytes());
    println!("{key} partition {p}");
    for (op, a, b) in steps {
        let next = match op { "rep" => r.with_node_replaced(a as _, b as _), "rem" => r.with_node_removed(a as _), _ => r.with_node_added(a as _) }.unwrap();
        println!("{op} {a} {b}: owners {:?} -> {:?}", r.owners(p), next.owners(p));
        if op=="add" && a==8 { for n in [2u64,3,4,7] { println!("node {n} loses {} partitions", r.partitions_of(n as _).len() - next.partitions_of(n as _).len()); } }
        r = next;
    }
}
