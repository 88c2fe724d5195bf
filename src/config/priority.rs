//! Priority classes. A job's class decides before fair share does: every waiting `high` job
//! goes before any `normal` one, and those before `low`; within a class users share by recent
//! GPU time (`scheduler::fair`). Here, below the scheduler, so that configuration names them.

use std::fmt;
use std::str::FromStr;

/// A job's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Batch work: runs when nothing else waits.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Interactive work that goes first.
    High,
}

impl Priority {
    /// Every class, lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// Its name (`low`, `normal`, `high`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Index for per-class tables (0 = low).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a priority class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority `{0}`: use low, normal or high")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            other => Err(UnknownPriority(other.chars().take(32).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_spellings_are_refused() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
        }
        for bad in ["", "HIGH", "High", " high", "high ", "urgent", "1", "normal\0"] {
            assert!(bad.parse::<Priority>().is_err(), "{bad:?}");
        }
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
    }
}
