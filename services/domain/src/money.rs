//! Amounts of money as people type them: yuan with at most two decimals, kept as fen (分) so
//! that no float ever carries an amount.

/// `"3000"`, `"3000.5"`, `" 0.07 "` → fen; `None` for anything else (a sign, three decimals,
/// a trailing point, letters, an amount that does not fit).
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || frac.len() > 2 || !digits(frac) || t.ends_with('.') {
        return None;
    }
    let fen: i64 = format!("{frac:0<2}").parse().ok()?;
    whole.parse::<i64>().ok()?.checked_mul(100)?.checked_add(fen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_become_exact_fen() {
        assert_eq!(yuan_to_fen("3000"), Some(300_000));
        assert_eq!(yuan_to_fen("3000.5"), Some(300_050));
        assert_eq!(yuan_to_fen(" 0.07 "), Some(7));
        for bad in ["", ".", "-1", "1.234", "1,000", "1e3", "abc", "三千", "1.", ".5", "99999999999999999999"] {
            assert_eq!(yuan_to_fen(bad), None, "{bad}");
        }
    }
}
