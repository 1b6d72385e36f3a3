//! Human sizes on the command line (`update --memory 32m`), as runc and Docker read them:
//! binary multiples, an optional `b`/`ib` suffix, any case.

/// A size that could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {0:?}: use a number of bytes with an optional k, m, g or t suffix")]
pub struct InvalidSize(pub String);

/// Parses `512`, `32m`, `1.5g`, `64MiB` into bytes. `-1` means unlimited and is kept.
pub fn parse_size(text: &str) -> Result<i64, InvalidSize> {
    let invalid = || InvalidSize(text.to_string());
    let lower = text.trim().to_ascii_lowercase();
    if lower == "-1" {
        return Ok(-1);
    }
    let without_b = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (number, multiplier) = match without_b.chars().last() {
        Some('k') => (&without_b[..without_b.len() - 1], 1i64 << 10),
        Some('m') => (&without_b[..without_b.len() - 1], 1 << 20),
        Some('g') => (&without_b[..without_b.len() - 1], 1 << 30),
        Some('t') => (&without_b[..without_b.len() - 1], 1 << 40),
        _ => (without_b, 1),
    };
    let value: f64 = number.trim().parse().map_err(|_| invalid())?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid());
    }
    let bytes = value * multiplier as f64;
    if bytes > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("32m"), Ok(32 << 20));
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert_eq!(parse_size("-1"), Ok(-1));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "m", "ten", "-5", "1x", "nan"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
