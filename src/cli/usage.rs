//! `comfygate usage`: the usage ledger's totals over a window, grouped by user, token, model,
//! backend or UTC day, as an aligned table, CSV (`--csv`) or a JSON array (`--json`).

use clap::Args;

use comfygate::Config;
use comfygate::store::{UsageGroup, UsageQuery, UsageTotals};
use comfygate::time::now_ms;
use comfygate::usage::window::parse_time;

/// `comfygate usage` arguments.
#[derive(Args)]
pub struct UsageArgs {
    /// Only this user's jobs.
    #[arg(long)]
    user: Option<String>,
    /// Jobs that ended since then: a duration before now (30d, 24h) or a UTC date (2026-11-01).
    #[arg(long, default_value = "30d")]
    since: String,
    /// Jobs that ended before then (same forms; default now).
    #[arg(long)]
    until: Option<String>,
    /// Group by user, token, model, backend or day (UTC).
    #[arg(long, default_value = "user")]
    by: String,
    /// CSV with a header line.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// A JSON array of objects.
    #[arg(long)]
    json: bool,
}

/// A bad argument to `comfygate usage` (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageArgError(pub String);

const HEADERS: [&str; 8] =
    ["key", "jobs", "done", "failed", "cancelled", "gpu_seconds", "mean_wait_seconds", "outputs"];

/// `comfygate usage`.
pub async fn run(config: &Config, args: UsageArgs) -> anyhow::Result<()> {
    let bad = |e: &dyn std::fmt::Display| UsageArgError(e.to_string());
    let now = now_ms();
    let since = parse_time(&args.since, now).map_err(|e| bad(&format!("--since: {e}")))?;
    let until = match &args.until {
        Some(text) => parse_time(text, now).map_err(|e| bad(&format!("--until: {e}")))?,
        None => now.saturating_add(1),
    };
    if until <= since {
        return Err(bad(&"--until must be after --since").into());
    }
    let by: UsageGroup = args.by.parse().map_err(|e| bad(&format!("--by: {e}")))?;
    let store = super::open_store(config, false).await?;
    let user_id = match &args.user {
        Some(name) => {
            let name = name.trim().to_lowercase();
            match store.user_by_name(&name).await? {
                Some(user) => Some(user.id),
                None => return Err(bad(&format!("--user: no user named `{}`", printable(&name))).into()),
            }
        }
        None => None,
    };
    let rows = store.usage_totals(&UsageQuery { since, until, user_id, by }).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if args.csv {
        print!("{}", csv(&rows));
    } else {
        let mut headers = HEADERS;
        headers[0] = by.as_str();
        let upper: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        print!("{}", super::accounts::table(&upper, rows.iter().map(|r| cells(r, printable(&r.key)))));
    }
    Ok(())
}

fn cells(r: &UsageTotals, key: String) -> Vec<String> {
    vec![
        key,
        r.jobs.to_string(),
        r.done.to_string(),
        r.failed.to_string(),
        r.cancelled.to_string(),
        format!("{:.3}", r.gpu_seconds),
        format!("{:.3}", r.mean_wait_seconds),
        r.outputs.to_string(),
    ]
}

/// The rows as CSV with a header line.
fn csv(rows: &[UsageTotals]) -> String {
    let mut out = HEADERS.join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = cells(r, csv_cell(&r.key)).into_iter().collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// A CSV field: quoted when it holds a separator, a quote or a line break; a model name comes
/// from a user's workflow, so one that a spreadsheet would run as a formula gets a `'` first.
fn csv_cell(text: &str) -> String {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text };
    if text.contains([',', '"']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

/// Text for a terminal: control characters (escape sequences) from user bytes replaced.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas_or_line_breaks() {
        assert_eq!(csv_cell("sdxl.safetensors"), "sdxl.safetensors");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_cell("a\nb\rc"), "a b c");
        assert_eq!(printable("x\u{1b}[2J"), "x?[2J");
    }
}
