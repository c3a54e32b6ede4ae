//! Character classes of Lua patterns, as LuaJIT defines them: its own ASCII table
//! (`lj_char.c`), whatever the C library's locale; bytes 128..=255 belong to no class.

// LuaJIT's character class bits (`lj_char.h`).
const CNTRL: u8 = 0x01;
const SPACE: u8 = 0x02;
const PUNCT: u8 = 0x04;
const DIGIT: u8 = 0x08;
const XDIGIT: u8 = 0x10;
const UPPER: u8 = 0x20;
const LOWER: u8 = 0x40;
const ALPHA: u8 = LOWER | UPPER;
const ALNUM: u8 = ALPHA | DIGIT;
const GRAPH: u8 = ALNUM | PUNCT;

/// `lj_char_bits` from `lj_char.c` (without its leading entry for EOF), verbatim: ASCII classes
/// whatever the locale; 0x80 marks identifier bytes, which no pattern class uses.
#[rustfmt::skip]
static CHAR_BITS: [u8; 256] = [
    1,  1,  1,  1,  1,  1,  1,  1,  1,  3,  3,  3,  3,  3,  1,  1,
    1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,
    2,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,
  152,152,152,152,152,152,152,152,152,152,  4,  4,  4,  4,  4,  4,
    4,176,176,176,176,176,176,160,160,160,160,160,160,160,160,160,
  160,160,160,160,160,160,160,160,160,160,160,  4,  4,  4,  4,132,
    4,208,208,208,208,208,208,192,192,192,192,192,192,192,192,192,
  192,192,192,192,192,192,192,192,192,192,192,  4,  4,  4,  4,  1,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
  128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,
];

/// The class bits each class letter names (`match_class_map`), for lower and upper case; 0 for
/// every other byte.
static CLASS_OF: [u8; 256] = {
    let mut map = [0u8; 256];
    let classes = [
        (b'a', ALPHA),
        (b'c', CNTRL),
        (b'd', DIGIT),
        (b'g', GRAPH),
        (b'l', LOWER),
        (b'p', PUNCT),
        (b's', SPACE),
        (b'u', UPPER),
        (b'w', ALNUM),
        (b'x', XDIGIT),
    ];
    let mut i = 0;
    while i < classes.len() {
        let (letter, bits) = classes[i];
        map[letter as usize] = bits;
        map[letter.to_ascii_uppercase() as usize] = bits;
        i += 1;
    }
    map
};

/// Whether `c` is in the class `%<class>` (`match_class`): a lower-case letter names a class,
/// its upper case the complement; `%z` is NUL (LuaJIT also has `%g`, printable but not space);
/// any other character stands for itself.
#[inline]
pub(super) fn match_class(c: u8, class: u8) -> bool {
    let bits = CLASS_OF[class as usize];
    if bits != 0 {
        let in_class = CHAR_BITS[c as usize] & bits != 0;
        return in_class == class.is_ascii_lowercase();
    }
    match class {
        b'z' => c == 0,
        b'Z' => c != 0,
        _ => class == c,
    }
}
