//! The usage ledger: every finished job (done, failed, cancelled) becomes one row in the
//! store's `job_usage` table, written by [`Ledger`] as the scheduler tells it the job ended.
//! `comfygate usage` and `GET /comfygate/api/usage` total it; the GPU-seconds quota and fair
//! share read it back with [`Store::gpu_ms_since`](crate::store::Store::gpu_ms_since).

pub mod drain;
pub mod window;

use std::sync::Arc;

use crate::scheduler::observe::{JobObserver, JobReport};
use crate::store::{Store, UsageRecord};

/// The [`JobObserver`] that writes the ledger.
pub struct Ledger {
    store: Arc<dyn Store>,
}

impl Ledger {
    /// A ledger writing to `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

/// The ledger row of a job that ended (`None` for a report of a job's start).
pub fn record_of(report: &JobReport) -> Option<UsageRecord> {
    let ended_at = report.ended_at?;
    if report.state.is_active() {
        return None;
    }
    let mut models = report.models.clone();
    models.sort();
    models.dedup();
    Some(UsageRecord {
        prompt_id: report.id.clone(),
        user_id: report.owner,
        username: report.username.clone(),
        token_id: report.token_id,
        backend: report.backend.clone(),
        models,
        priority: report.priority.as_str().to_owned(),
        created_at: report.created_at,
        started_at: report.started_at,
        ended_at,
        run_ms: report.run_ms,
        outcome: report.state.as_str().to_owned(),
        outputs: i64::try_from(report.outputs.len()).unwrap_or(i64::MAX),
    })
}

#[async_trait::async_trait]
impl JobObserver for Ledger {
    async fn job_started(&self, _report: &JobReport) {}

    async fn job_ended(&self, report: &JobReport) {
        let Some(record) = record_of(report) else { return };
        // One quick write on the scheduler's event path; a failure loses one row of accounting,
        // never the job.
        if let Err(e) = self.store.record_usage(&record).await {
            tracing::warn!(prompt_id = %record.prompt_id, error = %e, "cannot record the job's usage");
        }
    }
}
