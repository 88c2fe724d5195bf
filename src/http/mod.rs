//! What every handler shares about a request: who is calling ([`caller`]), where from
//! ([`client`]), and the one mapping of errors to responses ([`error`]). The edge that
//! receives requests and routes them is [`crate::edge`], above this and the handlers.

pub mod audit_context;
pub mod caller;
pub mod client;
pub mod error;

pub use audit_context::RequestContext;
pub use caller::{AdminCaller, Caller};
pub use client::ClientInfo;
pub use error::ApiError;
