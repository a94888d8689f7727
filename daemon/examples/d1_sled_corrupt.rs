//! Experiment for D1: sled 0.34 after a corrupt block in its log. Each `write` phase reopens
//! the database, checks every value flushed by earlier phases with `get` and with a scan,
//! writes more (overwrites of hot keys, new keys, deletes), flushes after each, and ends like
//! kill -9 (no drop). `corrupt` overwrites 4 KiB at an offset of the `db` file.
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

type Expect = BTreeMap<String, Option<Vec<u8>>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let d = std::path::PathBuf::from(&args[1]);
    let expect_path = d.with_extension("expect");
    match args[2].as_str() {
        "write" => {
            let (phase, n): (usize, usize) = (args[3].parse().unwrap(), args[4].parse().unwrap());
            let db = sled::Config::new().path(&d).flush_every_ms(None).open().unwrap();
            let mut expect: Expect =
                std::fs::read(&expect_path).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
            let mut written: BTreeMap<String, usize> =
                std::fs::read(d.with_extension("phase")).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
            let wrong: Vec<&String> = expect
                .iter()
                .filter(|(k, v)| db.get(k.as_bytes()).unwrap().map(|x| x.to_vec()) != **v)
                .map(|(k, _)| k)
                .collect();
            let late = wrong.iter().filter(|k| written.get(**k).is_some_and(|&p| p >= 1)).count();
            println!("LATE {late}");
            let live = expect.values().filter(|v| v.is_some()).count();
            let scanned = db.iter().count();
            println!(
                "phase {phase}: open: gets wrong {} of {} {:?}; scan sees {scanned} of {live} live",
                wrong.len(),
                expect.len(),
                &wrong[..wrong.len().min(5)]
            );
            for i in 0..n {
                let k = format!("p{phase:02}-{:05}", i % (n / 2).max(1));
                let v = vec![phase as u8; 40 + i % 30];
                db.insert(k.as_bytes(), v.clone()).unwrap();
                written.insert(k.clone(), phase);
                expect.insert(k, Some(v));
                let h = format!("h{:03}", (i * 7 + phase) % 40);
                let hv = format!("{phase}-{i}").into_bytes();
                db.insert(h.as_bytes(), hv.clone()).unwrap();
                written.insert(h.clone(), phase);
                expect.insert(h, Some(hv));
                if i % 5 == 0 {
                    let k = format!("h{:03}", (i * 3 + phase) % 40);
                    db.remove(k.as_bytes()).unwrap();
                    written.insert(k.clone(), phase);
                    expect.insert(k, None);
                }
                db.flush().unwrap();
            }
            std::fs::write(d.with_extension("phase"), serde_json::to_vec(&written).unwrap()).unwrap();
            std::fs::write(&expect_path, serde_json::to_vec(&expect).unwrap()).unwrap();
            std::process::exit(0);
        }
        "corrupt" => {
            let file = d.join("db");
            let len = std::fs::metadata(&file).unwrap().len();
            let at = args.get(3).map_or((len / 2).saturating_sub(2048), |s| s.parse().unwrap());
            let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            f.write_all(&garbage).unwrap();
            f.sync_all().unwrap();
            println!("corrupt: {len} bytes, garbage at {at}");
        }
        _ => unreachable!(),
    }
}
