//! The JSON body of each event.

use serde_json::{Value, json};

use super::spec::EventKind;
use crate::scheduler::observe::JobReport;
use crate::store::JobState;
use crate::time::format_ms;

/// The event a report is, if any (`Running` → started; the ends by state).
pub fn event_of(report: &JobReport) -> Option<EventKind> {
    match report.state {
        JobState::Running if report.ended_at.is_none() => Some(EventKind::Started),
        JobState::Done => Some(EventKind::Completed),
        JobState::Failed => Some(EventKind::Failed),
        JobState::Cancelled => Some(EventKind::Interrupted),
        _ => None,
    }
}

/// The body of `event` about `report`; output URLs start with `public_url` (the gateway's
/// `server.public_url`, without a trailing slash) or are relative (`/view?...`) without one.
pub fn body(event: EventKind, report: &JobReport, public_url: Option<&str>, now_ms: i64) -> Value {
    let status = match event {
        EventKind::Started => "running",
        EventKind::Completed => "success",
        EventKind::Failed => "error",
        EventKind::Interrupted => "interrupted",
    };
    let base = public_url.unwrap_or("").trim_end_matches('/');
    let mut data = json!({
        "prompt_id": report.public_id,
        "status": status,
        "queued_at": format_ms(report.created_at),
        "started_at": report.started_at.map(format_ms),
        "ended_at": report.ended_at.map(format_ms),
    });
    if let Some(backend) = &report.backend {
        data["backend"] = json!(backend);
    }
    if event == EventKind::Completed {
        let outputs: Vec<Value> = report
            .outputs
            .iter()
            .map(|f| {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("filename", &f.filename)
                    .append_pair("subfolder", &f.subfolder)
                    .append_pair("type", &f.kind)
                    .finish();
                json!({"filename": f.filename, "subfolder": f.subfolder, "type": f.kind, "url": format!("{base}/view?{query}")})
            })
            .collect();
        data["outputs"] = json!(outputs);
    }
    if matches!(event, EventKind::Failed | EventKind::Interrupted) {
        data["error"] = json!(report.error);
    }
    json!({"type": event.as_str(), "timestamp": format_ms(now_ms), "data": data})
}
