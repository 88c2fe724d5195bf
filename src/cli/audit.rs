//! `comfygate audit`: the audit events in the store, newest first, as aligned lines for people
//! or exactly the JSON lines (`--json`) for `jq`.

use serde_json::Value;

use comfygate::Config;
use comfygate::store::AuditQuery;
use comfygate::time::now_ms;

use super::AuditArgs;

/// `comfygate audit`.
pub async fn list(config: &Config, args: AuditArgs) -> anyhow::Result<()> {
    let since = args.since.map(|back| now_ms().saturating_sub(comfygate::time::ms(back)));
    let username = args.user.map(|u| u.trim().to_lowercase());
    let query = AuditQuery { username, event: args.event, since, limit: i64::from(args.limit), offset: 0 };
    let store = super::open_store(config, false).await?;
    let lines = store.audit_events(&query).await?;
    if args.json {
        for line in lines {
            println!("{line}");
        }
        return Ok(());
    }
    println!("{:<24} {:<28} {:<16} {:<16} {:<40} {:<8} REASON", "TIME", "EVENT", "USER", "BY", "ADDRESS", "OUTCOME");
    for line in lines {
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let field = |key: &str| match &v[key] {
            Value::String(s) => s.chars().filter(|c| !c.is_control()).collect(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        println!(
            "{:<24} {:<28} {:<16} {:<16} {:<40} {:<8} {}",
            field("time"),
            field("event"),
            field("user"),
            field("by"),
            field("address"),
            field("outcome"),
            field("reason"),
        );
    }
    Ok(())
}
