//! Byte sizes as users write them in Kubernetes (`1Mi`, `512Ki`) or nginx (`1m`, `100k`).

/// Parses a size into bytes. Binary suffixes `Ki`/`Mi`/`Gi` as Kubernetes writes them;
/// single letters `k`/`m`/`g` (either case) as nginx reads them, also binary. A
/// Kubernetes "millibyte" makes no sense for a size, so `m` is never 10⁻³ here.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit such as 1Mi or 64k"))?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" | "Ki" => 1 << 10,
        "m" | "M" | "Mi" => 1 << 20,
        "g" | "G" | "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {suffix:?} (use Ki, Mi, Gi, k, m or g)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn kubernetes_and_nginx_units() {
        assert_eq!(parse_bytes("1Mi"), Ok(1 << 20));
        assert_eq!(parse_bytes("100k"), Ok(100 << 10));
        assert_eq!(parse_bytes("10m"), Ok(10 << 20));
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1Ti").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("Mi").unwrap_err().contains("invalid size"));
    }
}
