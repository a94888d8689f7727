//! Random command sequences over the commands of chd's table ([`COMMANDS`]).
//!
//! Every entry of the table must have a generator here or be listed in [`EXCLUDED`] with its
//! reason; [`check_table`] says which entry has neither, so a command added to chd cannot go
//! untested silently (the binary and the CI test refuse to run until it is covered).
//!
//! Keys come from a small set so that commands meet each other's keys; each sequence renders
//! them under its own prefix ([`Arg::prefixed`]), so a sequence can be replayed on servers that
//! already ran others. Arguments favour edge values: empty, huge (up to chd's limits), negative,
//! non-numeric, binary, integers at and past the i64 bounds, float spellings both servers may
//! read differently, options in random case and order.

use chd_daemon::resp::cmd::{self, Kind, COMMANDS};
use chd_data::proto::{MAX_KEY, MAX_VALUE};

use crate::rng::Rng;

/// Table entries the tester never sends, and why.
pub const EXCLUDED: &[(&str, &str)] = &[("shutdown", "stops the server under test")];

/// One argument; a prefixed one is a key (or a pattern) of the sequence's own namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    pub prefixed: bool,
    pub bytes: Vec<u8>,
}

pub type Cmd = Vec<Arg>;

fn raw(b: impl AsRef<[u8]>) -> Arg {
    Arg { prefixed: false, bytes: b.as_ref().to_vec() }
}

fn keyed(b: impl AsRef<[u8]>) -> Arg {
    Arg { prefixed: true, bytes: b.as_ref().to_vec() }
}

/// The request sent for `cmd` under `prefix`.
pub fn render(cmd: &Cmd, prefix: &[u8]) -> Vec<Vec<u8>> {
    cmd.iter().map(|a| if a.prefixed { [prefix, &a.bytes].concat() } else { a.bytes.clone() }).collect()
}

/// The table entries without a generator or an exclusion (empty when all are covered).
pub fn check_table() -> Vec<&'static str> {
    let mut g = Gen::new(1, true);
    COMMANDS
        .iter()
        .filter(|s| !EXCLUDED.iter().any(|(n, _)| *n == s.name) && g.named(s.name).is_none())
        .map(|s| s.name)
        .collect()
}

const KEYS: &[&[u8]] =
    &[b"a", b"b", b"c", b"n", b"f", b"k:1", b"k:2", b"K*", b"k?x", b"[k]", b"k\\", b"\0\r\n", b" sp ", b"\xff\xfe"];

const INTS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "10",
    "-10",
    "100",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775806",
    "-9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999",
    "-0",
    "+1",
    "01",
    " 1",
    "1 ",
    "1.0",
    "1e3",
    "0x10",
    "abc",
    "",
    "4294967296",
    "-4294967296",
    "2147483647",
    "-2147483648",
];

const FLOATS: &[&str] = &[
    "0",
    "1",
    "-1",
    "0.1",
    "0.2",
    "1.5",
    "-2.5",
    "10.5",
    "3.0e3",
    "5e-3",
    "1E5",
    "1e+5",
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "1e400",
    "-1e400",
    "1e-400",
    "4.9e-324",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "+inf",
    "Inf",
    "INF",
    "infinity",
    "-Infinity",
    "0x10",
    "0x1p3",
    "-0",
    "-0.0",
    "+1.5",
    ".5",
    "5.",
    "1e",
    "1,5",
    " 1",
    "1 ",
    "",
    "abc",
    "9223372036854775807",
    "123456789.123456789",
    "1e20",
    "1e-20",
];

const PATTERNS: &[&[u8]] = &[
    b"*", b"?", b"k*", b"k:?", b"k:[12]", b"k:[^1]", b"k:[1-2]", b"k:[2-1]", b"[a-c]", b"[^a-c]", b"K\\*", b"k\\?x",
    b"\\[k\\]", b"[[]k]", b"[\\]]", b"[]", b"[", b"k[", b"k\\", b"k\\\\", b"\\", b"**", b"*k*", b"*:*", b"a*b", b"\0*",
    b"[a", b"[a-", b"[a-]", b"[^]", b"\xff*", b"*\\",
];

pub struct Gen {
    pub rng: Rng,
    /// Values of up to 32 MiB now and then (slow: off for short runs).
    pub huge: bool,
}

impl Gen {
    pub fn new(seed: u64, huge: bool) -> Gen {
        Gen { rng: Rng::new(seed), huge }
    }

    /// A sequence of `len` commands.
    pub fn sequence(&mut self, len: usize) -> Vec<Cmd> {
        (0..len).map(|_| self.command()).collect()
    }

    pub fn command(&mut self) -> Cmd {
        let r = self.rng.below(1000);
        if r < 10 {
            return self.unknown();
        }
        if r < 16 {
            return self.refused();
        }
        let spec = self.pick_spec();
        let mut c = self.named(spec.name).expect("check_table covers every command");
        if r < 40 {
            self.wrong_arity(spec.arity, &mut c);
        }
        c
    }

    fn pick_spec(&mut self) -> &'static cmd::Spec {
        let weight = |s: &cmd::Spec| -> u64 {
            if EXCLUDED.iter().any(|(n, _)| *n == s.name) {
                return 0;
            }
            // Listing the keys costs chd a visit to each of its 1024 partitions (about
            // 100 ms): rare enough that the run stays fast, often enough to matter.
            match (s.name, s.kind) {
                ("quit", _) => 1,
                ("hello", _) => 3,
                ("scan" | "keys", _) => 4,
                (_, Kind::Key) => 100,
                (_, Kind::Keyspace) => 1,
                _ => 6,
            }
        };
        let total: u64 = COMMANDS.iter().map(weight).sum();
        let mut x = self.rng.below(total);
        for s in COMMANDS {
            let w = weight(s);
            if x < w {
                return s;
            }
            x -= w;
        }
        unreachable!("weights sum to total")
    }

    /// The command's name, in random case now and then.
    fn name(&mut self, name: &str) -> Arg {
        if self.rng.chance(1, 3) {
            raw(self.mixed_case(name))
        } else {
            raw(name)
        }
    }

    fn mixed_case(&mut self, s: &str) -> String {
        s.chars().map(|c| if self.rng.chance(1, 2) { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect()
    }

    pub fn key(&mut self) -> Arg {
        match self.rng.below(1000) {
            0..=3 => raw(b""),
            4 => raw(vec![b'K'; MAX_KEY]),
            5 => raw(vec![b'L'; MAX_KEY + 1]),
            _ => keyed(self.rng.pick(KEYS)),
        }
    }

    fn keys(&mut self, max: usize) -> Vec<Arg> {
        let n = self.rng.range(1, max);
        (0..n).map(|_| self.key()).collect()
    }

    fn value(&mut self) -> Arg {
        let r = self.rng.below(1000);
        match r {
            0..=299 => raw(*self.rng.pick(INTS)),
            300..=449 => raw(*self.rng.pick(FLOATS)),
            450..=699 => {
                let n = self.rng.range(0, 12);
                let alphabet = b"abcxyz019 -.\0\r\n\xff*?";
                raw((0..n).map(|_| *self.rng.pick(alphabet)).collect::<Vec<u8>>())
            }
            700..=899 => raw(*self.rng.pick(&["", "v", "hello", "\0", "\r\n", "a\r\nb", "*1\r\n$1\r\nx\r\n"])),
            900..=989 => {
                let n = self.rng.range(100, 70_000);
                let b = b'a' + self.rng.below(26) as u8;
                raw(vec![b; n])
            }
            _ if self.huge && r == 999 => {
                let n =
                    if self.rng.chance(1, 10) { MAX_VALUE - self.rng.range(0, 16) } else { self.rng.range(1, 2 << 20) };
                raw(vec![b'h'; n])
            }
            _ => raw((0..self.rng.range(1, 300)).map(|_| self.rng.below(256) as u8).collect::<Vec<u8>>()),
        }
    }

    fn int(&mut self) -> Arg {
        if self.rng.chance(1, 10) {
            self.value()
        } else {
            raw(*self.rng.pick(INTS))
        }
    }

    fn float(&mut self) -> Arg {
        if self.rng.chance(1, 10) {
            self.value()
        } else {
            raw(*self.rng.pick(FLOATS))
        }
    }

    fn offset(&mut self) -> Arg {
        let big: &[String] = &[
            (MAX_VALUE - 3).to_string(),
            MAX_VALUE.to_string(),
            (MAX_VALUE + 1).to_string(),
            (1u64 << 31).to_string(),
            (1u64 << 32).to_string(),
        ];
        match self.rng.below(20) {
            0..=11 => raw(self.rng.below(20).to_string()),
            12..=14 => raw(format!("-{}", self.rng.below(20))),
            // The first makes a value of nearly 32 MiB: only when huge values are on.
            15 => raw(self.rng.pick(if self.huge { big } else { &big[1..] })),
            _ => self.int(),
        }
    }

    fn pattern(&mut self) -> Arg {
        let p = *self.rng.pick(PATTERNS);
        if self.rng.chance(1, 4) {
            raw(p)
        } else {
            keyed(p)
        }
    }

    /// A generated command for a table entry, or `None` for a name without a generator.
    pub fn named(&mut self, name: &str) -> Option<Cmd> {
        let mut c = vec![self.name(name)];
        match name {
            "get" | "getdel" | "strlen" | "incr" | "decr" | "type" | "ttl" | "pttl" => c.push(self.key()),
            "set" => {
                c.extend([self.key(), self.value()]);
                c.extend(self.set_options());
            }
            "setnx" | "getset" | "append" => c.extend([self.key(), self.value()]),
            "mget" | "del" | "unlink" | "exists" => c.extend(self.keys(5)),
            "mset" | "msetnx" => {
                for _ in 0..self.rng.range(1, 4) {
                    c.extend([self.key(), self.value()]);
                }
                if self.rng.chance(1, 20) {
                    c.pop();
                }
            }
            "incrby" | "decrby" => c.extend([self.key(), self.int()]),
            "incrbyfloat" => c.extend([self.key(), self.float()]),
            "getrange" => c.extend([self.key(), self.offset(), self.offset()]),
            "setrange" => {
                let v = if self.rng.chance(1, 5) { raw(b"") } else { self.value() };
                c.extend([self.key(), self.offset(), v]);
            }
            "scan" => c.extend(self.scan()),
            "keys" => c.push(self.pattern()),
            "dbsize" | "randomkey" | "time" | "lastsave" | "quit" => {}
            "ping" => {
                for _ in 0..*self.rng.pick(&[0, 0, 1, 1, 2]) {
                    c.push(self.value());
                }
            }
            "echo" => c.push(self.value()),
            "hello" => c.extend(self.hello()),
            "auth" => {
                let a: &[&[&str]] = &[&["x"], &["default", "x"], &["bob", "x"], &["a", "b", "c"], &[""]];
                c.extend(self.rng.pick(a).iter().map(raw));
            }
            "select" => c.push(raw(*self.rng.pick(&["0", "1", "-1", "abc", "00", "16", "+0", "-0", "", "0 "]))),
            "client" => c.extend(self.client()),
            "command" => c.extend(self.command_args()),
            "config" => c.extend(self.config()),
            "info" => {
                if self.rng.chance(1, 2) {
                    let s = *self.rng.pick(&["server", "keyspace", "all", "default", "everything", "foo", "Clients"]);
                    c.push(raw(s));
                }
            }
            _ => return None,
        }
        Some(c)
    }

    fn set_options(&mut self) -> Vec<Arg> {
        let mut opts = Vec::new();
        for _ in 0..*self.rng.pick(&[0, 0, 0, 1, 1, 2, 3]) {
            let o = match self.rng.below(40) {
                0..=11 => "nx",
                12..=23 => "xx",
                24..=35 => "get",
                36 => "ex",
                37 => "keepttl",
                38 => "px",
                _ => "foo",
            };
            opts.push(raw(self.mixed_case(o)));
            if matches!(o, "ex" | "px") {
                opts.push(raw(*self.rng.pick(&["100", "0", "-1", "abc"])));
            }
        }
        opts
    }

    fn scan(&mut self) -> Vec<Arg> {
        let cursor = match self.rng.below(20) {
            0..=16 => "0",
            17 => *self.rng.pick(&["1", "5", "1023", "4294967296"]),
            _ => *self.rng.pick(&["-1", "abc", "", "18446744073709551616", "18446744073709551615", " 0", "+0", "0x0"]),
        };
        let mut args = vec![raw(cursor)];
        for _ in 0..*self.rng.pick(&[0, 1, 1, 2, 3]) {
            let (opt, val) = match self.rng.below(10) {
                0..=3 => ("match", self.pattern()),
                4..=6 => ("count", raw(*self.rng.pick(&["1", "2", "10", "1000", "0", "-1", "abc", ""]))),
                7..=8 => ("type", raw(*self.rng.pick(&["string", "STRING", "list", "hash", "xyz"]))),
                _ => ("foo", raw("1")),
            };
            args.push(raw(self.mixed_case(opt)));
            if self.rng.chance(19, 20) {
                args.push(val);
            }
        }
        args
    }

    fn hello(&mut self) -> Vec<Arg> {
        let mut args = Vec::new();
        if self.rng.chance(4, 5) {
            args.push(raw(*self.rng.pick(&["2", "3", "3", "2", "1", "4", "abc", "-1", ""])));
            for _ in 0..self.rng.range(0, 2) {
                match self.rng.below(5) {
                    0 | 1 => {
                        args.push(raw(self.mixed_case("auth")));
                        args.push(raw(*self.rng.pick(&["default", "bob"])));
                        args.push(raw("pw"));
                    }
                    2 | 3 => {
                        args.push(raw(self.mixed_case("setname")));
                        args.push(raw(*self.rng.pick(&["me", "a b", "", "x\ny"])));
                    }
                    _ => args.push(raw(*self.rng.pick(&["foo", "auth", "setname"]))),
                }
            }
        }
        args
    }

    fn client(&mut self) -> Vec<Arg> {
        let sub = *self.rng.pick(&["setname", "getname", "id", "list", "info", "setinfo", "help", "foo"]);
        let mut args = vec![raw(if self.rng.chance(1, 3) { self.mixed_case(sub) } else { sub.into() })];
        match sub {
            "setname" => {
                let names: &[&[u8]] = &[b"me", b"a b", b"", b"x\ny", b"caf\xc3\xa9", b"~!@"];
                args.push(raw(self.rng.pick(names)));
            }
            "setinfo" => {
                args.push(raw(*self.rng.pick(&["lib-name", "LIB-VER", "foo"])));
                args.push(raw(*self.rng.pick(&["redis-py", "1.0", "a b"])));
            }
            _ => {}
        }
        args
    }

    fn command_args(&mut self) -> Vec<Arg> {
        let sub = *self.rng.pick(&["", "count", "list", "info", "docs", "getkeys", "foo"]);
        if sub.is_empty() {
            return Vec::new();
        }
        let mut args = vec![raw(self.mixed_case(sub))];
        if matches!(sub, "info" | "docs") {
            for _ in 0..self.rng.range(0, 3) {
                let known = self.rng.pick(COMMANDS).name;
                let n = if self.rng.chance(1, 5) { "nosuchcmd".to_string() } else { self.mixed_case(known) };
                args.push(raw(n));
            }
        }
        args
    }

    fn config(&mut self) -> Vec<Arg> {
        let sub = *self.rng.pick(&["get", "get", "set", "resetstat", "rewrite", "foo"]);
        let mut args = vec![raw(self.mixed_case(sub))];
        match sub {
            "get" => {
                for _ in 0..self.rng.range(0, 2) {
                    args.push(raw(*self.rng.pick(&["port", "save", "databases", "maxmemory", "nosuch", "*", "PORT"])));
                }
            }
            // Only parameters Redis does not have: the tester must not reconfigure Redis.
            "set" => args.extend([raw("nosuch-param"), raw("1")]),
            _ => {}
        }
        args
    }

    /// A name that is no command of chd or Redis, with arguments.
    fn unknown(&mut self) -> Cmd {
        let long = "x".repeat(200);
        let name = match self.rng.below(8) {
            0 => raw(""),
            1 => raw(long),
            2 => raw(b"g\0et"),
            3 => raw(b"set\r\n"),
            4 => raw(b"caf\xc3\xa9"),
            _ => raw(*self.rng.pick(&["foo", "GETT", "sett", "xyzzy", "Nope"])),
        };
        let mut c = vec![name];
        for _ in 0..self.rng.range(0, 4) {
            c.push(if self.rng.chance(1, 2) { self.key() } else { self.value() });
        }
        c
    }

    /// A Redis command chd refuses, in a form that changes nothing in Redis.
    fn refused(&mut self) -> Cmd {
        let name = *self.rng.pick(&["llen", "lrange", "hgetall", "smembers", "zcard", "getbit", "bitcount", "substr"]);
        let mut c = vec![self.name(name), self.key()];
        match name {
            "lrange" | "substr" => c.extend([raw("0"), raw("-1")]),
            "getbit" => c.push(raw("3")),
            _ => {}
        }
        c
    }

    /// Breaks a command's arity: one argument fewer or more than the table allows.
    fn wrong_arity(&mut self, arity: i32, c: &mut Cmd) {
        let want = if arity > 0 {
            let n = arity as usize;
            if n > 1 && self.rng.chance(1, 2) {
                n - 1
            } else {
                n + 1
            }
        } else {
            let min = (-arity) as usize;
            if min <= 1 {
                return;
            }
            min - 1
        };
        while c.len() > want {
            c.pop();
        }
        while c.len() < want {
            c.push(self.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_has_a_generator_or_a_reason() {
        assert_eq!(check_table(), Vec::<&str>::new());
        for (name, _) in EXCLUDED {
            assert!(cmd::lookup(name.as_bytes()).is_some(), "{name} is excluded but not in chd's table");
        }
    }

    #[test]
    fn sequences_depend_on_the_seed_only() {
        let a = Gen::new(7, false).sequence(200);
        assert_eq!(a, Gen::new(7, false).sequence(200));
        assert_ne!(a, Gen::new(8, false).sequence(200));
        assert_eq!(render(&vec![raw("get"), keyed("a")], b"p:"), vec![b"get".to_vec(), b"p:a".to_vec()]);
    }
}
