//! Deterministic random calls for the differential tests: patterns from a grammar of pattern
//! items (with occasional malformed pieces), subjects from small alphabets so that matches
//! happen, and every argument shape the functions accept or reject.

/// SplitMix64: tiny, and the same sequence on every platform and toolchain.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// A Lua string literal for any bytes (decimal escapes for everything but plain ASCII).
pub(super) fn quote(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\{b:03}"));
        }
    }
    s.push('"');
    s
}

const SUBJECT_BYTES: &[u8] = b"aaaabbbccc  ()[]%-.^$1Z\0\xff\n";
const LITERALS: &[u8] = b"aaabbc() 1Z\xff.-]^$";
const CLASSES: &[u8] = b"acdglpsuwxzACDGLPSUWXZ%.()[]-";
const SET_MEMBERS: &[&[u8]] = &[
    b"a", b"b", b"c", b"]", b"-", b"^", b"%a", b"%d", b"%s", b"%]", b"a-b", b"b-a", b" ", b"\0", b"\xff",
];
const QUANTIFIERS: &[&[u8]] = &[b"", b"", b"", b"", b"*", b"+", b"-", b"?"];
const MALFORMED: &[&[u8]] = &[
    b"%", b"[", b"[^", b"(", b")", b"%f", b"%fa", b"%b", b"%b(", b"\0a*", b"%0", b"%9", b"[%",
];

pub(super) fn subject(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(11);
    (0..len).map(|_| rng.pick(SUBJECT_BYTES)).collect()
}

pub(super) fn pattern(rng: &mut Rng) -> Vec<u8> {
    let mut p = Vec::new();
    if rng.chance(15) {
        p.push(b'^');
    }
    let n = 1 + rng.below(4);
    items(rng, &mut p, 0, n);
    if rng.chance(15) {
        p.push(b'$');
    }
    if rng.chance(6) {
        let at = rng.below(p.len() + 1);
        let bad = rng.pick(MALFORMED);
        p.splice(at..at, bad.iter().copied());
    }
    p
}

fn items(rng: &mut Rng, p: &mut Vec<u8>, depth: usize, n: usize) {
    for _ in 0..n {
        match rng.below(14) {
            0..=8 => {
                single(rng, p);
                p.extend_from_slice(rng.pick(QUANTIFIERS));
            }
            9 if depth < 2 => {
                p.push(b'(');
                let inner = 1 + rng.below(3);
                items(rng, p, depth + 1, inner);
                p.push(b')');
            }
            10 => p.extend_from_slice(b"()"),
            11 => {
                p.extend_from_slice(b"%b");
                p.push(rng.pick(b"()ab"));
                p.push(rng.pick(b"()ab"));
            }
            12 => {
                p.extend_from_slice(b"%f");
                set(rng, p);
            }
            _ => {
                p.push(b'%');
                p.push(rng.pick(b"1123"));
            }
        }
    }
}

fn single(rng: &mut Rng, p: &mut Vec<u8>) {
    match rng.below(5) {
        0 | 1 => p.push(rng.pick(LITERALS)),
        2 => p.push(b'.'),
        3 => {
            p.push(b'%');
            p.push(rng.pick(CLASSES));
        }
        _ => set(rng, p),
    }
}

fn set(rng: &mut Rng, p: &mut Vec<u8>) {
    p.push(b'[');
    if rng.chance(30) {
        p.push(b'^');
    }
    for _ in 0..1 + rng.below(3) {
        p.extend_from_slice(rng.pick(SET_MEMBERS));
    }
    p.push(b']');
}

fn replacement_text(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[b"x", b"%0", b"%1", b"%2", b"%%", b"%a", b"-", b"\0", b"%", b"yz"];
    (0..rng.below(4))
        .flat_map(|_| rng.pick(PIECES).iter().copied())
        .collect()
}

const INITS: &[&str] = &[
    "1",
    "1",
    "2",
    "3",
    "-1",
    "-3",
    "0",
    "5",
    "20",
    "-20",
    "1.9",
    "-1.5",
    "'2'",
    "' 3 '",
    "'0x2'",
    "2^31",
    "-2^31",
    "2^32+2",
    "3e9",
    "1e300",
    "0/0",
    "math.huge",
    "-math.huge",
    "nil",
    "'x'",
    "{}",
    "true",
];
const PLAINS: &[&str] = &["true", "false", "nil", "1", "'x'"];
const COUNTS: &[&str] = &[
    "0", "1", "2", "-1", "1.5", "'1'", "2^32+1", "1e300", "0/0", "nil", "'x'", "{}", "true", "2^31", "3e9",
];
const FUNCTIONS: &[&str] = &[
    "R.f_first",
    "R.f_all",
    "R.f_nil",
    "R.f_false",
    "R.f_none",
    "R.f_num",
    "R.f_negzero",
    "R.f_int",
    "R.f_table",
    "R.f_true",
    "R.f_err",
    "R.f_multi",
    "R.f_nested",
];
const TABLES: &[&str] = &["R.t_plain", "R.t_meta", "{}"];
const NUMBER_SUBJECTS: &[&str] = &["12.5", "-0", "100", "1e15", "0/0", "-7"];

/// `count` case chunks from `seed`.
pub(super) fn cases(seed: u64, count: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| case(&mut rng)).collect()
}

fn case(rng: &mut Rng) -> String {
    let s = if rng.chance(4) {
        rng.pick(NUMBER_SUBJECTS).to_string()
    } else {
        quote(&subject(rng))
    };
    let p = quote(&pattern(rng));
    match rng.below(13) {
        0 | 1 => format!("return R.ret(string.find({s}, {p}))"),
        2 => format!("return R.ret(string.find({s}, {p}, {}))", rng.pick(INITS)),
        3 => format!(
            "return R.ret(string.find({s}, {p}, {}, {}))",
            rng.pick(INITS),
            rng.pick(PLAINS)
        ),
        4 | 5 => format!("return R.ret(string.match({s}, {p}))"),
        6 => format!("return R.ret(string.match({s}, {p}, {}))", rng.pick(INITS)),
        7 | 8 => format!("local it = string.gmatch({s}, {p}) return R.iter(it)"),
        9 => format!("return R.ret(string.gsub({s}, {p}, {}))", quote(&replacement_text(rng))),
        10 => format!("return R.ret(string.gsub({s}, {p}, {}))", rng.pick(FUNCTIONS)),
        11 => format!("return R.ret(string.gsub({s}, {p}, {}))", rng.pick(TABLES)),
        _ => format!(
            "return R.ret(string.gsub({s}, {p}, {}, {}))",
            quote(&replacement_text(rng)),
            rng.pick(COUNTS)
        ),
    }
}
