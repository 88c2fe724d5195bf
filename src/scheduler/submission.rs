//! What a `POST /prompt` body may carry to a backend: the forwarded request is built from an
//! allow-list, never copied. Fields ComfyUI would choke on (a 500 that looks like the
//! backend failing) are refused here with ComfyUI's 400 error shape; the queue position
//! fields (`number`, `front`) are checked and dropped: ordering is the gateway's business.

use serde_json::{Map, Value, json};

use super::jobs::Answer;

/// The longest prompt id a client may choose.
const MAX_PROMPT_ID: usize = 128;

/// A checked submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The body sent to backends (without `client_id` / `prompt_id`, added per dispatch):
    /// `prompt`, `extra_data` (an object), and `partial_execution_targets` when given.
    pub request: Value,
    /// The client's `client_id` (empty when none).
    pub client_id: String,
    /// The prompt id the client chose, if any.
    pub prompt_id: Option<String>,
    /// ComfyUI's `front: true` (the caller's highest allowed class, see
    /// [`Priority`](super::priority::Priority)).
    pub front: bool,
    /// The class asked for in `extra_data.priority` (never forwarded).
    pub priority: Option<super::priority::Priority>,
    /// `extra_data.webhook` as given (never forwarded; the webhooks module checks it).
    pub webhook: Option<Value>,
}

/// Checks a body and builds what may be forwarded.
pub fn check(mut body: Map<String, Value>) -> Result<Submission, Answer> {
    let prompt = match body.remove("prompt") {
        Some(Value::Object(prompt)) => prompt,
        Some(_) => return Err(invalid("invalid_prompt", "prompt must be an object of nodes", "")),
        None => return Err(Answer::comfy_error("no_prompt", "No prompt provided", "No prompt provided")),
    };
    let mut extra_data = match body.remove("extra_data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(extra)) => extra,
        Some(_) => return Err(invalid("invalid_extra_data", "extra_data must be an object", "")),
    };
    // The gateway's own keys: a backend never sees them.
    let priority = match extra_data.remove("priority") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => match name.parse::<super::priority::Priority>() {
            Ok(priority) => Some(priority),
            Err(e) => return Err(invalid("invalid_priority", &e.to_string(), "")),
        },
        Some(_) => return Err(invalid("invalid_priority", "extra_data.priority must be low, normal or high", "")),
    };
    let webhook = match extra_data.remove("webhook") {
        None | Some(Value::Null) => None,
        Some(hook) => Some(hook),
    };
    let targets = match body.remove("partial_execution_targets") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ids)) if ids.iter().all(Value::is_string) => Some(ids),
        Some(_) => {
            return Err(invalid(
                "invalid_partial_execution_targets",
                "partial_execution_targets must be a list of node ids",
                "",
            ));
        }
    };
    match body.remove("number") {
        None | Some(Value::Null | Value::Number(_)) => {}
        Some(_) => return Err(invalid("invalid_number", "number must be a number", "")),
    }
    let front = match body.remove("front") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(front)) => front,
        Some(_) => return Err(invalid("invalid_front", "front must be true or false", "")),
    };
    let client_id = match body.remove("client_id") {
        None | Some(Value::Null) => String::new(),
        // Kept with the job, and PostgreSQL text cannot hold NUL: refused for every store alike.
        Some(Value::String(id)) if id.chars().any(char::is_control) => {
            return Err(invalid("invalid_client_id", "client_id must not contain control characters", ""));
        }
        Some(Value::String(id)) => id,
        Some(_) => return Err(invalid("invalid_client_id", "client_id must be a string", "")),
    };
    let prompt_id = match body.remove("prompt_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if valid_prompt_id(&id) => Some(id),
        Some(_) => {
            return Err(invalid(
                "invalid_prompt_id",
                "prompt_id must be a string of 1-128 letters, digits, '-' or '_'",
                "",
            ));
        }
    };
    // Anything else is not ComfyUI's and is not forwarded.
    let mut request = json!({"prompt": prompt, "extra_data": extra_data});
    if let Some(targets) = targets {
        request["partial_execution_targets"] = Value::Array(targets);
    }
    Ok(Submission { request, client_id, prompt_id, front, priority, webhook })
}

fn invalid(kind: &str, message: &str, details: &str) -> Answer {
    Answer::comfy_error(kind, message, details)
}

fn valid_prompt_id(id: &str) -> bool {
    (1..=MAX_PROMPT_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: Value) -> Map<String, Value> {
        let mut base = json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            base[k] = v;
        }
        base.as_object().cloned().unwrap_or_default()
    }

    fn refusal(extra: Value) -> String {
        match check(body(extra)) {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(answer) => {
                assert_eq!(answer.status, http::StatusCode::BAD_REQUEST);
                let v: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
                assert!(v["node_errors"].is_object(), "ComfyUI's error shape: {v}");
                v["error"]["type"].as_str().unwrap_or_default().to_owned()
            }
        }
    }

    #[test]
    fn wrong_types_are_refused_in_comfyuis_shape() {
        let cases = [
            (json!({"number": "x"}), "invalid_number"),
            (json!({"number": [1]}), "invalid_number"),
            (json!({"front": "yes"}), "invalid_front"),
            (json!({"front": 1}), "invalid_front"),
            (json!({"extra_data": []}), "invalid_extra_data"),
            (json!({"extra_data": "x"}), "invalid_extra_data"),
            (json!({"partial_execution_targets": "1"}), "invalid_partial_execution_targets"),
            (json!({"partial_execution_targets": [1]}), "invalid_partial_execution_targets"),
            (json!({"prompt": []}), "invalid_prompt"),
            (json!({"prompt": "x"}), "invalid_prompt"),
            (json!({"client_id": 5}), "invalid_client_id"),
            (json!({"client_id": "a\u{0}b"}), "invalid_client_id"),
            (json!({"prompt_id": ""}), "invalid_prompt_id"),
            (json!({"prompt_id": "../x"}), "invalid_prompt_id"),
            (json!({"prompt_id": 7}), "invalid_prompt_id"),
            (json!({"prompt_id": "x".repeat(129)}), "invalid_prompt_id"),
            (json!({"extra_data": {"priority": "urgent"}}), "invalid_priority"),
            (json!({"extra_data": {"priority": "HIGH"}}), "invalid_priority"),
            (json!({"extra_data": {"priority": 2}}), "invalid_priority"),
            (json!({"extra_data": {"priority": ["high"]}}), "invalid_priority"),
        ];
        for (extra, kind) in cases {
            assert_eq!(refusal(extra.clone()), kind, "{extra}");
        }
        assert!(matches!(check(Map::new()), Err(a) if String::from_utf8_lossy(&a.body).contains("no_prompt")));
    }

    #[test]
    fn only_the_allowed_fields_are_forwarded() {
        let s = check(body(json!({
            "number": -1_000_000_000, "front": true, "client_id": "c1", "prompt_id": "job-0001",
            "extra_data": {"extra_pnginfo": {"workflow": {}}}, "partial_execution_targets": ["9"],
            "unknown": {"big": true},
        })))
        .unwrap_or_else(|_| panic!("refused"));
        let keys: Vec<&str> = s.request.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
        assert_eq!(keys, ["prompt", "extra_data", "partial_execution_targets"]);
        assert_eq!(s.client_id, "c1");
        assert_eq!(s.prompt_id.as_deref(), Some("job-0001"));
        assert_eq!(s.request["extra_data"]["extra_pnginfo"], json!({"workflow": {}}));
        let plain =
            check(body(json!({"number": 3.5, "front": false, "extra_data": null}))).unwrap_or_else(|_| panic!());
        assert_eq!(
            plain.request,
            json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "extra_data": {}})
        );
        assert_eq!((plain.client_id.as_str(), plain.prompt_id), ("", None));
        assert!(!plain.front && plain.priority.is_none() && plain.webhook.is_none());
    }

    #[test]
    fn the_gateways_own_keys_are_taken_out_of_extra_data() {
        let s = check(body(json!({
            "front": true,
            "extra_data": {"priority": "high", "webhook": {"url": "https://example.com/h"}, "extra_pnginfo": {}},
        })))
        .unwrap_or_else(|_| panic!("refused"));
        assert!(s.front);
        assert_eq!(s.priority, Some(super::super::priority::Priority::High));
        assert_eq!(s.webhook, Some(json!({"url": "https://example.com/h"})));
        assert_eq!(s.request["extra_data"], json!({"extra_pnginfo": {}}));
    }
}
