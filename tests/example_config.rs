//! The documented example configuration is valid and states the defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use comfygate::Config;

const EXAMPLE: &str = include_str!("../comfygate.example.toml");

#[test]
fn example_config_loads() {
    let config = Config::from_toml(EXAMPLE).unwrap();
    assert_eq!(config.backends.len(), 1);
    assert_eq!(config.backends[0].url, "http://127.0.0.1:8188");
}

#[test]
fn example_config_states_the_built_in_defaults() {
    let example = Config::from_toml(EXAMPLE).unwrap();
    let defaults = Config::load(None, std::iter::empty()).unwrap();
    assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
}
