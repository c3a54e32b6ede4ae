//! HTTP dates and nginx's calendar: `Date`/`Last-Modified`/`Expires` values,
//! cookie expiry dates, and the broken-down time `ngx.utctime()` formats.
//!
//! Calendar arithmetic is a port of nginx's `ngx_gmtime`/`ngx_parse_http_time` rather than
//! `httpdate`, because nginx's quirks are observable: negative times clamp to 1970, times past
//! 9999 clamp to its last second, cookie years after 2037 have four digits, and the parser accepts
//! any weekday text and a missing "GMT" (`httpdate` rejects those and cannot format past 9999).

/// Broken-down UTC time as `ngx_gmtime` yields it (month 1-12, weekday 0 = Sunday).
pub struct Tm {
    pub year: i64,
    pub mon: i64,
    pub mday: i64,
    pub hour: i64,
    pub min: i64,
    pub sec: i64,
    pub wday: usize,
}

const WEEK: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Port of `ngx_gmtime` (Gauss' formula), including its clamping to 1970..=9999.
pub fn gmtime(t: i64) -> Tm {
    let t = t.max(0);
    let (mut days, mut sec) = (t / 86400, t % 86400);
    // 2932896 days after the epoch is December 31, 9999.
    if days > 2_932_896 {
        days = 2_932_896;
        sec = 86399;
    }
    let wday = ((4 + days) % 7) as usize;
    let (hour, min) = (sec / 3600, sec % 3600 / 60);
    sec %= 60;
    // Days since March 1, 1 BC.
    let days = days - (31 + 28) + 719_527;
    let mut year = (days + 2) * 400 / (365 * 400 + 100 - 4 + 1);
    let mut yday = days - (365 * year + year / 4 - year / 100 + year / 400);
    if yday < 0 {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        yday += 365 + i64::from(leap);
        year -= 1;
    }
    let mut mon = (yday + 31) * 10 / 306;
    let mday = yday - (367 * mon / 12 - 30) + 1;
    if yday >= 306 {
        year += 1;
        mon -= 10;
    } else {
        mon += 2;
    }
    Tm {
        year,
        mon,
        mday,
        hour,
        min,
        sec,
        wday,
    }
}

fn month_name(tm: &Tm) -> &'static str {
    MONTHS[usize::try_from(tm.mon - 1).unwrap_or(0) % 12]
}

/// `ngx_http_time`: "Thu, 18 Nov 2010 11:27:35 GMT".
pub fn http_time(t: i64) -> String {
    let tm = gmtime(t);
    format!(
        "{}, {:02} {} {:4} {:02}:{:02}:{:02} GMT",
        WEEK[tm.wday],
        tm.mday,
        month_name(&tm),
        tm.year,
        tm.hour,
        tm.min,
        tm.sec
    )
}

/// `ngx_http_cookie_time`: "Thu, 18-Nov-10 11:27:35 GMT" (four-digit years after 2037).
pub fn cookie_time(t: i64) -> String {
    let tm = gmtime(t);
    let year = if tm.year > 2037 {
        tm.year.to_string()
    } else {
        format!("{:02}", tm.year % 100)
    };
    format!(
        "{}, {:02}-{}-{year} {:02}:{:02}:{:02} GMT",
        WEEK[tm.wday],
        tm.mday,
        month_name(&tm),
        tm.hour,
        tm.min,
        tm.sec
    )
}

/// "2010-11-18 11:27:35", as `ngx.utctime()` and `ngx.localtime()` give it.
pub fn date_time(tm: &Tm) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.year, tm.mon, tm.mday, tm.hour, tm.min, tm.sec
    )
}

/// Port of `ngx_parse_http_time` (RFC 1123, RFC 850 and asctime forms). `None` where nginx
/// returns NGX_ERROR, and also for a result of -1, which `ngx.parse_http_time` cannot tell apart.
/// Dates before 1970 give negative values as nginx's unsigned arithmetic does after the cast.
pub fn parse_http_time(value: &[u8]) -> Option<i64> {
    #[derive(PartialEq)]
    enum Format {
        Rfc822,
        Rfc850,
        Isoc,
    }
    // Reads past the end as NUL, like the NUL-terminated Lua string nginx is given.
    let at = |i: usize| value.get(i).copied().unwrap_or(0);
    let digit = |i: usize| at(i).is_ascii_digit().then(|| u64::from(at(i) - b'0'));
    let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
    let four = |i: usize| Some(two(i)? * 100 + two(i + 2)?);
    let end = value.len();

    let mut format = None;
    let mut p = 0;
    while p < end {
        if value[p] == b',' {
            break;
        }
        if value[p] == b' ' {
            format = Some(Format::Isoc);
            break;
        }
        p += 1;
    }
    p += 1;
    while p < end && value[p] == b' ' {
        p += 1;
    }
    if end.saturating_sub(p) < 18 {
        return None;
    }
    let mut day = 0;
    if format.is_none() {
        day = two(p)?;
        p += 2;
        format = match at(p) {
            b' ' if end - p >= 18 => Some(Format::Rfc822),
            b'-' => Some(Format::Rfc850),
            _ => return None,
        };
        p += 1;
    }
    let format = format?;
    let month: usize = match at(p) {
        b'J' if at(p + 1) == b'a' => 0,
        b'J' if at(p + 2) == b'n' => 5,
        b'J' => 6,
        b'F' => 1,
        b'M' if at(p + 2) == b'r' => 2,
        b'M' => 4,
        b'A' if at(p + 1) == b'p' => 3,
        b'A' => 7,
        b'S' => 8,
        b'O' => 9,
        b'N' => 10,
        b'D' => 11,
        _ => return None,
    };
    p += 3;
    if (format == Format::Rfc822 && at(p) != b' ') || (format == Format::Rfc850 && at(p) != b'-') {
        return None;
    }
    p += 1;
    let mut year = 0;
    match format {
        Format::Rfc822 => {
            year = four(p)?;
            p += 4;
        }
        Format::Rfc850 => {
            year = two(p)?;
            year += if year < 70 { 2000 } else { 1900 };
            p += 2;
        }
        Format::Isoc => {
            if at(p) == b' ' {
                p += 1;
            }
            day = digit(p)?;
            p += 1;
            if at(p) != b' ' {
                day = day * 10 + digit(p)?;
                p += 1;
            }
            if end.saturating_sub(p) < 14 {
                return None;
            }
        }
    }
    if at(p) != b' ' {
        return None;
    }
    let hour = two(p + 1)?;
    if at(p + 3) != b':' {
        return None;
    }
    let min = two(p + 4)?;
    if at(p + 6) != b':' {
        return None;
    }
    let sec = two(p + 7)?;
    if format == Format::Isoc {
        if at(p + 9) != b' ' {
            return None;
        }
        year = four(p + 10)?;
    }
    if hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    const MDAY: [u64; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day == 29 && month == 1 {
        if year % 4 != 0 || (year % 100 == 0 && year % 400 != 0) {
            return None;
        }
    } else if day > MDAY[month] {
        return None;
    }
    // Gauss' formula counts from March 1, so January and February belong to the previous year.
    // nginx computes in unsigned 64-bit arithmetic and casts to time_t; wrapping u64 reproduces
    // its results bit for bit, including for years before 1970.
    let (month, year) = match month {
        0 | 1 => (month as u64 + 11, year.wrapping_sub(1)),
        _ => (month as u64 - 1, year),
    };
    let days = (365u64.wrapping_mul(year))
        .wrapping_add(year / 4)
        .wrapping_sub(year / 100)
        .wrapping_add(year / 400)
        .wrapping_add(367 * month / 12)
        .wrapping_sub(30)
        .wrapping_add(day)
        .wrapping_sub(1)
        .wrapping_sub(719_527 - 31 - 28);
    let time = days.wrapping_mul(86400).wrapping_add(hour * 3600 + min * 60 + sec) as i64;
    (time != -1).then_some(time)
}
