//! comfygate: a secure, multi-user front door for ComfyUI servers.
//!
//! The request path reads top to bottom through the modules:
//! [`http`] (edge: listener, TLS, client address, errors) → [`auth`] (who is asking) →
//! [`policy`] (what they may do) → [`web`] (the gateway's own pages and API), [`userdata`]
//! (saved workflows and settings, kept per user by the gateway) or [`proxy`] (everything
//! else, streamed to ComfyUI). [`store`] holds users, tokens and sessions.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod cluster;
pub mod comfy;
pub mod config;
pub mod doctor;
pub mod edge;
pub mod envfile;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod scheduler;
pub mod state;
pub mod store;
pub mod time;
pub mod usage;
pub mod userdata;
pub mod web;
pub mod webhooks;

pub use config::Config;
pub use state::App;
