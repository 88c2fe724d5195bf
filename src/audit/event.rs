//! One audit event: what happened, to whom, by whom, from where, and how it ended; and the
//! JSON line it is written as.

use serde_json::{Map, Value};

/// Longest user agent written (characters); the rest is cut.
pub const MAX_USER_AGENT: usize = 256;

/// How the action an event records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was done.
    Success,
    /// It was attempted and failed (a wrong password, a store error).
    Failure,
    /// Policy refused it (lockout, role, quota, cross-site).
    Refused,
}

impl Outcome {
    /// The word written.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Refused => "refused",
        }
    }
}

/// Where an action comes from: the acting account and, over the network, the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The acting account (`cli` for the command line).
    pub by: Option<String>,
    /// The client's address as the gateway resolved it.
    pub address: Option<String>,
    /// The client's `User-Agent`, cut to [`MAX_USER_AGENT`] characters.
    pub user_agent: Option<String>,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
}

impl Context {
    /// An action of the command line.
    pub fn cli() -> Self {
        Self { by: Some("cli".to_owned()), ..Self::default() }
    }

    /// An action the gateway takes by itself (`by` names what: `startup`, `scheduler`).
    pub fn gateway(what: &str) -> Self {
        Self { by: Some(what.to_owned()), ..Self::default() }
    }

    /// A request from `address` with these `User-Agent` and `X-Request-Id` values.
    pub fn request(address: String, user_agent: Option<&str>, request_id: Option<&str>) -> Self {
        Self {
            by: None,
            address: Some(address),
            user_agent: user_agent.filter(|u| !u.is_empty()).map(|u| u.chars().take(MAX_USER_AGENT).collect()),
            request_id: request_id.filter(|r| !r.is_empty()).map(|r| r.chars().take(MAX_USER_AGENT).collect()),
        }
    }

    /// The same, acted by `account`.
    pub fn by(&self, account: &str) -> Self {
        Self { by: Some(account.to_owned()), ..self.clone() }
    }
}

/// An event about to be written.
#[derive(Debug, Clone)]
pub struct Event {
    name: &'static str,
    outcome: Outcome,
    user: Option<String>,
    reason: Option<String>,
    token_id: Option<i64>,
    fields: Map<String, Value>,
}

impl Event {
    /// An action done.
    pub fn success(name: &'static str) -> Self {
        Self::new(name, Outcome::Success)
    }

    /// An action that failed.
    pub fn failure(name: &'static str) -> Self {
        Self::new(name, Outcome::Failure)
    }

    /// An action policy refused.
    pub fn refused(name: &'static str) -> Self {
        Self::new(name, Outcome::Refused)
    }

    fn new(name: &'static str, outcome: Outcome) -> Self {
        Self { name, outcome, user: None, reason: None, token_id: None, fields: Map::new() }
    }

    /// The account concerned.
    pub fn user(mut self, user: &str) -> Self {
        self.user = (!user.is_empty()).then(|| user.to_owned());
        self
    }

    /// Why it ended as it did.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The token concerned (its id, never its secret).
    pub fn token(mut self, id: i64) -> Self {
        self.token_id = Some(id);
        self
    }

    /// An event-specific field (never a credential).
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    /// The event's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How it ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The account concerned.
    pub fn username(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The token concerned.
    pub fn token_id(&self) -> Option<i64> {
        self.token_id
    }

    /// The JSON line (without its newline) for this event in `context` at `at_ms`.
    pub fn line(&self, context: &Context, at_ms: i64) -> String {
        let mut line = Map::new();
        line.insert("time".to_owned(), Value::String(rfc3339_ms(at_ms)));
        line.insert("event".to_owned(), Value::String(self.name.to_owned()));
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                line.insert(key.to_owned(), Value::String(v.to_owned()));
            }
        };
        put("user", self.user.as_deref());
        put("by", context.by.as_deref().filter(|by| Some(*by) != self.user.as_deref()));
        put("address", context.address.as_deref());
        put("user_agent", context.user_agent.as_deref());
        put("request_id", context.request_id.as_deref());
        put("outcome", Some(self.outcome.as_str()));
        put("reason", self.reason.as_deref());
        if let Some(id) = self.token_id {
            line.insert("token_id".to_owned(), Value::from(id));
        }
        for (key, value) in &self.fields {
            line.entry(key.clone()).or_insert_with(|| value.clone());
        }
        Value::Object(line).to_string()
    }
}

/// `at_ms` as RFC 3339 in UTC with milliseconds.
fn rfc3339_ms(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_line_has_the_common_fields_in_order_and_escapes_control_characters() {
        let context = Context::request("10.0.0.1".to_owned(), Some("curl\n\u{1b}[31m"), Some("rid-1")).by("root");
        let line = Event::refused("admin_route_refused").user("alice").reason("role").field("path_class", "admin");
        let text = line.line(&context, 1_700_000_000_123);
        assert!(!text.contains('\n'), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["event"], "admin_route_refused");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["by"], "root");
        assert_eq!(v["address"], "10.0.0.1");
        assert_eq!(v["user_agent"], "curl\n\u{1b}[31m");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["path_class"], "admin");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[..3], ["time", "event", "user"]);
    }

    #[test]
    fn by_is_left_out_when_it_is_the_user_and_fields_cannot_overwrite_common_ones() {
        let context = Context::default().by("alice");
        let text = Event::success("logout").user("alice").field("outcome", "forged").line(&context, 0);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v.get("by").is_none(), "{text}");
        assert!(v.get("address").is_none(), "{text}");
        assert_eq!(v["outcome"], "success");
    }

    #[test]
    fn user_agents_are_cut() {
        let long = "x".repeat(10_000);
        let context = Context::request("::1".to_owned(), Some(&long), None);
        assert_eq!(context.user_agent.unwrap().len(), MAX_USER_AGENT);
        assert_eq!(context.request_id, None);
    }
}
