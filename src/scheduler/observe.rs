//! What the rest of the gateway hears of a job's life: its start and its end, as a
//! [`JobReport`] told to every registered [`JobObserver`] (the usage ledger, webhooks). Told
//! after the store has recorded the change and before the slot is offered again; an observer
//! that needs durability writes to the store before it returns.

use std::sync::Arc;

use serde_json::Value;

use super::jobs::Active;
use super::priority::Priority;
use crate::store::JobState;

/// One output file of a job, as the backend named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// File name.
    pub filename: String,
    /// Subfolder ('' for none).
    pub subfolder: String,
    /// `output` or `temp`.
    pub kind: String,
}

/// A job at its start or its end.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// The gateway's id (the one backends see).
    pub id: String,
    /// The id its owner knows it by.
    pub public_id: String,
    /// Owner's user id.
    pub owner: i64,
    /// Owner's name.
    pub username: String,
    /// The API token that submitted it.
    pub token_id: Option<i64>,
    /// The backend that ran it (or last held it).
    pub backend: Option<String>,
    /// The model files it uses (empty when not known).
    pub models: Vec<String>,
    /// Its priority class.
    pub priority: Priority,
    /// `Running` at its start; `Done`, `Failed` or `Cancelled` at its end.
    pub state: JobState,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was submitted (unix ms).
    pub created_at: i64,
    /// When its run started (unix ms, the gateway's clock).
    pub started_at: Option<i64>,
    /// When it ended (unix ms; `None` at its start).
    pub ended_at: Option<i64>,
    /// GPU run time in ms: from the backend's own `execution_start` and end timestamps when it
    /// sent them, else the gateway's clock; `None` when it never ran.
    pub run_ms: Option<i64>,
    /// Its output files (at its end).
    pub outputs: Vec<OutputFile>,
    /// `extra_data.webhook` as submitted.
    pub webhook: Option<Arc<Value>>,
}

/// Something that wants to know when jobs start and end.
#[async_trait::async_trait]
pub trait JobObserver: Send + Sync {
    /// A job's run started on its backend (told once per job).
    async fn job_started(&self, report: &JobReport);
    /// A job ended, whatever the way (told once per job; a job cancelled before it ran is
    /// told with `started_at: None`).
    async fn job_ended(&self, report: &JobReport);
}

impl JobReport {
    /// The report of `job` (gateway id `id`) in `state`.
    pub(super) fn of(id: &str, job: &Active, state: JobState, error: Option<&str>, ended_at: Option<i64>) -> Self {
        let (outputs, run_ms) = match &job.record {
            Some(record) => (files_of(&record.outputs), backend_run_ms(&record.messages)),
            None => (Vec::new(), None),
        };
        let run_ms = run_ms.or_else(|| Some(ended_at? - job.started_at?).map(|ms| ms.max(0)));
        JobReport {
            id: id.to_owned(),
            public_id: job.public_id.to_string(),
            owner: job.owner,
            username: job.username.to_string(),
            token_id: job.token_id,
            backend: job.backend.clone(),
            models: job.requirements.as_ref().map(|r| r.model_files().into_iter().collect()).unwrap_or_default(),
            priority: job.priority,
            state,
            error: error.map(str::to_owned),
            created_at: job.created_at,
            started_at: job.started_at,
            ended_at,
            run_ms,
            outputs,
            webhook: job.webhook.clone(),
        }
    }
}

/// The output files of a run's `executed` outputs by node (`{"images": [{filename, ...}]}`).
fn files_of(outputs: &serde_json::Map<String, Value>) -> Vec<OutputFile> {
    outputs
        .values()
        .filter_map(Value::as_object)
        .flat_map(|by_kind| by_kind.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|file| {
            Some(OutputFile {
                filename: file["filename"].as_str()?.to_owned(),
                subfolder: file["subfolder"].as_str().unwrap_or_default().to_owned(),
                kind: file["type"].as_str().unwrap_or("output").to_owned(),
            })
        })
        .collect()
}

/// Run time from the backend's own timestamps: `execution_start` to the first of
/// `execution_success`, `execution_error` or `execution_interrupted` (ComfyUI stamps each with
/// its clock in ms).
fn backend_run_ms(messages: &[Value]) -> Option<i64> {
    let stamp = |kinds: &[&str]| {
        messages.iter().find_map(|m| {
            let kind = m.get(0)?.as_str()?;
            kinds.contains(&kind).then(|| m.get(1)?.get("timestamp")?.as_i64()).flatten()
        })
    };
    let start = stamp(&["execution_start"])?;
    let end = stamp(&["execution_success", "execution_error", "execution_interrupted"])?;
    (end >= start).then_some(end - start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn run_time_comes_from_the_backends_own_stamps_when_it_sent_both() {
        let both = [
            json!(["execution_start", {"prompt_id": "p", "timestamp": 1_000}]),
            json!(["execution_cached", {"nodes": [], "timestamp": 1_001}]),
            json!(["execution_success", {"prompt_id": "p", "timestamp": 4_500}]),
        ];
        assert_eq!(backend_run_ms(&both), Some(3_500));
        let failed = [json!(["execution_start", {"timestamp": 10}]), json!(["execution_error", {"timestamp": 70}])];
        assert_eq!(backend_run_ms(&failed), Some(60));
        assert_eq!(backend_run_ms(&both[..2]), None, "no end stamp");
        let backwards = [json!(["execution_start", {"timestamp": 10}]), json!(["execution_success", {"timestamp": 5}])];
        assert_eq!(backend_run_ms(&backwards), None, "a clock that went back is not trusted");
        assert_eq!(backend_run_ms(&[json!(["execution_success", {"timestamp": "x"}])]), None);
    }

    #[test]
    fn output_files_are_listed_from_every_node_and_kind() {
        let outputs = json!({
            "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
            "12": {"gifs": [{"filename": "b.webp", "subfolder": "s", "type": "temp"}], "text": ["not a file"]},
            "13": "garbage",
        });
        let files = files_of(outputs.as_object().unwrap_or(&serde_json::Map::new()));
        let names: Vec<(&str, &str, &str)> =
            files.iter().map(|f| (f.filename.as_str(), f.subfolder.as_str(), f.kind.as_str())).collect();
        assert_eq!(names, [("a.png", "", "output"), ("b.webp", "s", "temp")]);
    }
}
