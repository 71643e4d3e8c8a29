//! The layers of the configuration: a TOML file, then `TETHER_*` environment
//! variables, then flags (each overrides the one before), validated in full
//! before anything binds; and the `--print-config` rendering.
//!
//! clap already reads flags and the environment and knows every key's
//! parser, so the file is merged *through* clap: each file key is first
//! checked alone (so an error names the file and the key), then given to
//! clap as a flag only where neither the environment nor a flag set it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::Config;

/// Keys whose values are secrets: `--print-config` shows them as
/// `<redacted>`.
pub const SECRET_KEYS: &[&str] = &["cluster_nats_password", "cluster_nats_token"];

/// Keys that steer loading itself and so cannot be set from the file.
const NOT_IN_FILE: &[&str] = &["config", "print_config", "help", "version"];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
}

/// Why the configuration cannot be used, or why tetherd should not run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `--version`: print this to stdout and exit successfully.
    #[error("{0}")]
    Info(String),
    /// An invalid value or key: one line naming it.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A loaded configuration.
#[derive(Debug)]
pub struct Loaded {
    /// The effective, validated configuration.
    pub config: Config,
    matches: ArgMatches,
    sources: BTreeMap<String, Source>,
}

/// Loads the configuration from the process's arguments `args` (the first
/// being the program name), its environment, and the `--config` file.
pub fn load<I, T>(args: I) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = Config::command().try_get_matches_from(&args).map_err(|e| clap_error(e, &args))?;
    let mut sources = BTreeMap::new();
    let mut merged = vec![args.first().cloned().unwrap_or_else(|| "tetherd".into())];
    if let Some(path) = first.get_one::<PathBuf>("config") {
        for (key, value) in read_file(path)? {
            if first.value_source(&key).is_none_or(|s| s == ValueSource::DefaultValue) {
                merged.push(format!("--{}={value}", flag(&key)).into());
                sources.insert(key, Source::File(path.clone()));
            }
        }
    }
    merged.extend(args.iter().skip(1).cloned());
    let matches = Config::command().try_get_matches_from(&merged).map_err(|e| clap_error(e, &args))?;
    let config = Config::from_arg_matches(&matches).map_err(|e| clap_error(e, &args))?;
    config.validate().map_err(ConfigError::Invalid)?;
    for arg in Config::command().get_arguments() {
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            _ if sources.contains_key(id) => continue,
            Some(ValueSource::EnvVariable) => {
                Source::Env(arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default())
            }
            Some(ValueSource::CommandLine) => Source::Flag,
            _ => Source::Default,
        };
        sources.insert(id.to_string(), source);
    }
    Ok(Loaded { config, matches, sources })
}

/// `data_dir` → `data-dir`.
fn flag(key: &str) -> String {
    key.replace('_', "-")
}

/// Reads the file's keys, checking each key and value alone so that an
/// error names the file and the key.
fn read_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let at = |what: String| ConfigError::Invalid(format!("config file {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read it: {e}")))?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| at(e.to_string().lines().next().unwrap_or("").to_string()))?;
    let command = Config::command();
    let mut values = Vec::new();
    for (key, value) in table {
        let known = command.get_arguments().any(|a| a.get_id() == key.as_str()) && !NOT_IN_FILE.contains(&&*key);
        if !known {
            return Err(at(format!("unknown key `{key}` (see `tetherd --print-config` for the keys)")));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => return Err(at(format!("`{key}` must be a string or a number, not {}", other.type_str()))),
        };
        let alone = ["tetherd".to_string(), format!("--{}={value}", flag(&key))];
        if let Err(e) = Config::command().try_get_matches_from(alone) {
            return Err(at(format!("`{key}`: {}", reason(&e))));
        }
        values.push((key, value));
    }
    Ok(values)
}

/// The one-line reason of a clap error, without its "error: " prefix.
fn reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// A clap error as one line; a value that came from the environment names
/// its variable.
fn clap_error(e: clap::Error, args: &[OsString]) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return ConfigError::Info(e.to_string());
    }
    let mut line = reason(&e);
    if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        let long = arg.split_whitespace().next().unwrap_or_default();
        let on_command_line =
            args.iter().any(|a| a.to_str().is_some_and(|a| a == long || a.starts_with(&format!("{long}="))));
        let command = Config::command();
        let env = command
            .get_arguments()
            .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
            .and_then(|a| a.get_env())
            .filter(|env| std::env::var_os(env).is_some());
        if let (false, Some(env)) = (on_command_line, env) {
            line = format!("{line} (from {})", env.to_string_lossy());
        }
    }
    ConfigError::Invalid(line)
}

impl Loaded {
    /// The effective configuration as TOML (keys as the file takes them),
    /// secrets redacted, each value followed by where it came from.
    pub fn render(&self) -> String {
        self.render_redacting(SECRET_KEYS)
    }

    fn render_redacting(&self, secrets: &[&str]) -> String {
        let mut out = String::from("# tetherd effective configuration (file < TETHER_* environment < flags)\n");
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            if NOT_IN_FILE.contains(&id) {
                continue;
            }
            let origin = match self.sources.get(id) {
                Some(Source::File(path)) => format!("file {}", path.display()),
                Some(Source::Env(var)) => format!("env {var}"),
                Some(Source::Flag) => "flag".to_string(),
                Some(Source::Default) | None => "default".to_string(),
            };
            let raw: Option<Vec<String>> =
                self.matches.get_raw(id).map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect());
            match raw {
                None => out.push_str(&format!("# {id} is not set\n")),
                Some(_) if secrets.contains(&id) => {
                    out.push_str(&format!("{id} = \"<redacted>\"  # {origin}\n"));
                }
                Some(values) => {
                    let value = values.join(",");
                    let rendered =
                        if value.parse::<i64>().is_ok() { value } else { toml::Value::String(value).to_string() };
                    out.push_str(&format!("{id} = {rendered}  # {origin}\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_secrets_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tether.toml");
        std::fs::write(&file, "default_ttl = \"1m\"\nmax_wait = \"30s\"\nmax_connections = 10\n").unwrap();
        let loaded = load(["tetherd", "--config", file.to_str().unwrap(), "--max-wait", "45s"]).unwrap();
        assert_eq!(loaded.config.default_ttl, std::time::Duration::from_secs(60));
        assert_eq!(loaded.config.max_wait, std::time::Duration::from_secs(45));
        assert_eq!(loaded.config.max_connections, 10);
        let text = loaded.render_redacting(&["data_dir"]);
        assert!(text.contains("max_wait = \"45s\"  # flag"), "{text}");
        assert!(text.contains("max_connections = 10  # file"), "{text}");
        assert!(text.contains("data_dir = \"<redacted>\""), "{text}");
        assert!(text.contains("# state_descriptor is not set"), "{text}");
        // What it prints reads back as a file.
        let body: String = text.lines().filter(|l| !l.contains("<redacted>")).collect::<Vec<_>>().join("\n");
        std::fs::write(&file, body).unwrap();
        let again = load(["tetherd", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(again.config.max_wait, std::time::Duration::from_secs(45));
    }

    #[test]
    fn file_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tether.toml");
        let path = file.to_str().unwrap();
        for (body, expected) in [
            ("heartbeat_misses = 0", "`heartbeat_misses`"),
            ("listen_addr = \"127.0.0.1:1\"", "unknown key `listen_addr`"),
            ("print_config = true", "unknown key `print_config`"),
            ("default_ttl = [1]", "`default_ttl` must be a string or a number"),
            ("default_ttl = ", "config file"),
        ] {
            std::fs::write(&file, body).unwrap();
            let ConfigError::Invalid(line) = load(["tetherd", "--config", path]).unwrap_err() else { panic!() };
            assert!(line.contains(path) && line.contains(expected), "{body:?}: {line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }
}
