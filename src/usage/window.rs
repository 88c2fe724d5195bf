//! The time windows usage reports cover: `30d`, `24h`, `90m` (that long before now) or a UTC
//! date `2026-11-01` (its midnight), and the UTC day the GPU quota counts.

pub use crate::limits::{DAY_MS, day_start, seconds_to_next_day};

/// A time the CLI or the API was given that names no time.
#[derive(Debug, thiserror::Error)]
#[error("bad time `{0}`: use a duration before now (30d, 24h, 90m) or a UTC date (2026-11-01)")]
pub struct BadTime(pub String);

/// The unix ms `text` names, relative to `now` for durations.
pub fn parse_time(text: &str, now: i64) -> Result<i64, BadTime> {
    let bad = || BadTime(text.chars().take(40).collect());
    let text = text.trim();
    if let Some((number, unit)) = text.char_indices().last().map(|(i, c)| (&text[..i], c)) {
        let per = match unit {
            'd' => Some(DAY_MS),
            'h' => Some(3_600_000),
            'm' => Some(60_000),
            _ => None,
        };
        if let Some(per) = per {
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: i64 = number.parse().map_err(|_| bad())?;
            return Ok(now.saturating_sub(n.checked_mul(per).ok_or_else(bad)?));
        }
    }
    date_ms(text).ok_or_else(bad)
}

/// Midnight UTC of `YYYY-MM-DD`.
fn date_ms(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse::<i64>().ok()).flatten();
    let (y, m, d) = (digits(y)?, digits(m)?, digits(d)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) * DAY_MS)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000_000;

    #[test]
    fn durations_count_back_from_now_and_dates_are_utc_midnight() {
        assert_eq!(parse_time("30d", NOW).ok(), Some(NOW - 30 * DAY_MS));
        assert_eq!(parse_time("24h", NOW).ok(), Some(NOW - DAY_MS));
        assert_eq!(parse_time("90m", NOW).ok(), Some(NOW - 90 * 60_000));
        assert_eq!(parse_time("1970-01-02", NOW).ok(), Some(DAY_MS));
        assert_eq!(parse_time("2026-11-01", NOW).ok(), Some(1_793_491_200_000));
        assert_eq!(parse_time("2024-02-29", NOW).ok(), Some(1_709_164_800_000));
    }

    #[test]
    fn other_spellings_are_refused() {
        for bad in [
            "",
            "d",
            "-3d",
            "3w",
            "+3d",
            "3 d",
            "2026-02-30",
            "2025-02-29",
            "2026-1-01",
            "26-11-01",
            "x",
            "99999999999999999999d",
            "९d",
        ] {
            assert!(parse_time(bad, NOW).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_quota_day_ends_at_utc_midnight() {
        let midnight = day_start(NOW) + DAY_MS;
        assert_eq!(seconds_to_next_day(midnight - 1_500), 2);
        assert_eq!(seconds_to_next_day(midnight), 86_400);
        assert_eq!(day_start(midnight + 5), midnight);
    }
}
