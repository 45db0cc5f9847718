//! Layered configuration.
//!
//! Layers, each overriding the one before:
//! 1. `config/default.toml` (compiled in): the sections every service shares.
//! 2. The service's own defaults (`config/<service>.toml`, compiled into the service).
//! 3. An environment-specific file, named by `TOCSIN_CONFIG` (or [`ConfigLoader::file`]).
//! 4. Environment variables `TOCSIN__SECTION__KEY=value` (`TOCSIN__KAFKA__BROKERS=...`);
//!    values are parsed as TOML scalars or arrays, so `TOCSIN__HTTP__PORT=9000` is a number.
//!
//! Every struct is `deny_unknown_fields`: a misspelt key anywhere is an error at start-up
//! that names the key and where it came from, never a silently ignored setting.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// `config/default.toml`, compiled in so that a binary runs from any directory.
pub const SHARED_DEFAULTS: &str = include_str!("../../../config/default.toml");

const ENV_PREFIX: &str = "TOCSIN__";
const ENV_FILE: &str = "TOCSIN_CONFIG";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("environment variable {name} is not a valid configuration key: {problem}")]
    BadVariable { name: String, problem: &'static str },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        // figment's Display names the offending key and its source; join every error.
        let all: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        ConfigError::Invalid(all.join("; "))
    }
}

/// Builds a service's configuration from its layers.
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    service_defaults: Option<&'static str>,
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl ConfigLoader {
    /// The layers as a running process sees them: `TOCSIN_CONFIG` and the `TOCSIN__*`
    /// variables of its environment.
    pub fn from_process(service_defaults: Option<&'static str>) -> Self {
        ConfigLoader {
            service_defaults,
            file: std::env::var_os(ENV_FILE).map(PathBuf::from),
            env: std::env::vars().collect(),
        }
    }

    /// No file, no environment: the compiled-in defaults only (tests build on this).
    pub fn defaults_only(service_defaults: Option<&'static str>) -> Self {
        ConfigLoader {
            service_defaults,
            file: None,
            env: Vec::new(),
        }
    }

    /// The environment-specific file.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Replaces the environment variables considered (only `TOCSIN__*` ones are used).
    pub fn env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    pub fn load<C: DeserializeOwned>(&self) -> Result<C, ConfigError> {
        let mut figment = Figment::from(Toml::string(SHARED_DEFAULTS));
        if let Some(defaults) = self.service_defaults {
            figment = figment.merge(Toml::string(defaults));
        }
        if let Some(path) = &self.file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.clone()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::globals(env_layer(&self.env)?));
        Ok(figment.extract()?)
    }
}

/// Turns `TOCSIN__KAFKA__BROKERS=x` into `{kafka: {brokers: "x"}}`.
fn env_layer(vars: &[(String, String)]) -> Result<Dict, ConfigError> {
    let mut root = Dict::new();
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::BadVariable {
                name: name.clone(),
                problem: "empty section or key between '__' separators",
            });
        }
        let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
        insert(&mut root, &keys, value).map_err(|problem| ConfigError::BadVariable {
            name: name.clone(),
            problem,
        })?;
    }
    Ok(root)
}

fn insert(dict: &mut Dict, keys: &[String], value: Value) -> Result<(), &'static str> {
    match keys {
        [] => Err("no key"),
        [last] => {
            dict.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            match entry {
                Value::Dict(_, inner) => insert(inner, rest, value),
                _ => Err("a key is both a value and a section"),
            }
        }
    }
}

/// `[http]`: where the service's HTTP server listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`; port 0 picks a free one (tests).
    pub listen: String,
}

/// `[redis]`: the Redis that holds the service's state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`, without credentials.
    pub url: String,
    /// Kept out of the URL so that it is never printed with it.
    #[serde(default)]
    pub password: Option<SecretString>,
}

/// `[log]`: how the service logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives (`info`, `tocsin_bus=debug,info`); `RUST_LOG` wins.
    pub filter: String,
    /// `json` for machines (the default), `pretty` for a person at a terminal.
    pub format: LogFormat,
    /// Key of the HMAC that replaces personal data in log lines. Set it per deployment:
    /// with a known key, a hash can be matched against a list of addresses.
    pub pii_key: SecretString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}
