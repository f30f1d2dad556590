//! The app manifest (`sluice.toml`): its typed model, parsing with errors that point at a
//! line and a field, and the checks that need no server.
//!
//! Every resource's table has exactly the fields its API takes, read into the server's own
//! configuration types, so a field the server would refuse is refused here first, at its
//! line. What only the server can know (does the dead-letter queue a subscription names
//! exist, does a trigger's function) is left to `sluice apply`, whose errors name the
//! manifest entry and its line too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_broker::{QueueConfig, SubscriptionConfig, TopicConfig};
use sluice_functions::{ProjectionConfig, TriggerConfig, VersionSettings};
use sluice_sagas::SagaDefinition;
use sluice_types::{ByteSize, HumanDuration, Name};
use toml::Spanned;

/// The file `sluice apply` and `sluice up` read when none is named.
pub const DEFAULT_FILE: &str = "sluice.toml";
/// Largest manifest read, in bytes.
pub const SIZE_MAX: u64 = 4 << 20;

/// A parsed and checked manifest, with the text it came from (for locations).
#[derive(Debug)]
pub struct Manifest {
    /// Where the file is; relative paths in it are relative to its directory.
    pub path: PathBuf,
    text: String,
    pub app: App,
    pub queues: BTreeMap<Name, Spanned<QueueConfig>>,
    pub topics: BTreeMap<Name, Spanned<TopicConfig>>,
    /// Topic → subscription name → configuration.
    pub subscriptions: BTreeMap<Name, BTreeMap<Name, Spanned<SubscriptionConfig>>>,
    pub event_subscriptions: BTreeMap<Name, Spanned<EventSubscription>>,
    pub functions: BTreeMap<Name, Spanned<Function>>,
    pub sagas: BTreeMap<Name, Spanned<SagaDefinition>>,
    pub triggers: BTreeMap<Name, Spanned<TriggerConfig>>,
    pub projections: BTreeMap<Name, Spanned<ProjectionConfig>>,
}

/// The `[app]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app's name, shown by `sluice up`.
    pub name: Option<String>,
    /// A directory of static files (HTML, JavaScript, CSS) the server serves under
    /// `/app/`, for pages that follow the app live.
    pub site: Option<PathBuf>,
}

/// A `[functions.NAME]` table: the component to deploy, how to build it, and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// The component deployed, relative to the manifest's directory.
    pub wasm: PathBuf,
    /// How to build `wasm` from its sources, if it is built.
    pub build: Option<Build>,
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_memory() -> ByteSize {
    VersionSettings::default().memory
}
fn default_timeout() -> HumanDuration {
    VersionSettings::default().timeout
}
fn default_concurrency() -> u32 {
    VersionSettings::default().concurrency
}

impl Function {
    /// The settings of the version this entry deploys.
    pub fn settings(&self) -> VersionSettings {
        VersionSettings {
            memory: self.memory,
            timeout: self.timeout,
            env: self.env.clone(),
            concurrency: self.concurrency,
        }
    }
}

/// How a function's component is built: a command run in the manifest's directory when
/// the component is missing or older than any of its sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    /// Files or directories the component is built from.
    pub sources: Vec<PathBuf>,
}

/// An `[event_subscriptions.NAME]` table: a persistent subscription of the event store
/// that selects a `category` or one `stream`, with a topic subscription's other settings.
#[derive(Debug, Clone)]
pub struct EventSubscription {
    pub selector: EventSelector,
    /// The settings as written; the server fills in the rest (and starts at the
    /// beginning of `$all` unless `start` says otherwise).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The settings with every default filled in.
    pub config: SubscriptionConfig,
}

/// Which streams an event-store subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSelector {
    Category(String),
    Stream(String),
}

impl EventSelector {
    /// As the broker selects it.
    pub fn broker(&self) -> sluice_broker::StreamSelector<'_> {
        match self {
            EventSelector::Category(c) => sluice_broker::StreamSelector::Category(c),
            EventSelector::Stream(s) => sluice_broker::StreamSelector::Stream(s),
        }
    }
}

/// Reads an event subscription's table: exactly one of `category` and `stream`, and
/// the settings of a topic subscription.
fn event_subscription(mut table: toml::Table) -> Result<EventSubscription, String> {
    let mut take = |key: &str| match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "{key}: expected a string, found {}",
            other.type_str()
        )),
    };
    let selector = match (take("category")?, take("stream")?) {
        (Some(c), None) => EventSelector::Category(c),
        (None, Some(s)) => EventSelector::Stream(s),
        _ => return Err("name exactly one of `category` and `stream`".to_owned()),
    };
    selector.broker().validate().map_err(|e| e.to_string())?;
    let settings = match serde_json::to_value(&table).map_err(|e| e.to_string())? {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a table serializes as an object"),
    };
    let config: SubscriptionConfig =
        serde_json::from_value(serde_json::Value::Object(settings.clone()))
            .map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(EventSubscription {
        selector,
        settings,
        config,
    })
}

/// The file as written: the typed model before the checks that span entries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    app: App,
    #[serde(default)]
    queues: BTreeMap<Name, Spanned<QueueConfig>>,
    #[serde(default)]
    topics: BTreeMap<Name, Spanned<TopicConfig>>,
    #[serde(default)]
    subscriptions: BTreeMap<Name, BTreeMap<Name, Spanned<SubscriptionConfig>>>,
    #[serde(default)]
    event_subscriptions: BTreeMap<Name, Spanned<toml::Table>>,
    #[serde(default)]
    functions: BTreeMap<Name, Spanned<Function>>,
    #[serde(default)]
    sagas: BTreeMap<Name, Spanned<SagaDefinition>>,
    #[serde(default)]
    triggers: BTreeMap<Name, Spanned<TriggerConfig>>,
    #[serde(default)]
    projections: BTreeMap<Name, Spanned<ProjectionConfig>>,
}

/// A line and column in the manifest, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub path: PathBuf,
    pub at: Option<Location>,
    /// The entry (`queues.orders`), when the error is about one.
    pub entry: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(at) = self.at {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        write!(f, ": ")?;
        if let Some(entry) = &self.entry {
            write!(f, "{entry}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ManifestError {}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let fail = |message: String| ManifestError {
            path: path.to_owned(),
            at: None,
            entry: None,
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        if meta.len() > SIZE_MAX {
            return Err(fail(format!(
                "it is {} bytes; a manifest is at most {SIZE_MAX}",
                meta.len()
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        Manifest::parse(path, text)
    }

    /// Parses and checks manifest text; `path` names it in errors and anchors its
    /// relative paths.
    pub fn parse(path: &Path, text: String) -> Result<Manifest, ManifestError> {
        let raw: Raw = toml::from_str(&text).map_err(|e| ManifestError {
            path: path.to_owned(),
            at: e.span().map(|s| location(&text, s.start)),
            entry: e.span().and_then(|s| field_at(&text, s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        let mut event_subscriptions = BTreeMap::new();
        for (name, table) in raw.event_subscriptions {
            let span = table.span();
            let sub = event_subscription(table.into_inner()).map_err(|message| ManifestError {
                path: path.to_owned(),
                at: Some(location(&text, span.start)),
                entry: Some(format!("event_subscriptions.{name}")),
                message,
            })?;
            event_subscriptions.insert(name, Spanned::new(span, sub));
        }
        let m = Manifest {
            path: path.to_owned(),
            text,
            app: raw.app,
            queues: raw.queues,
            topics: raw.topics,
            subscriptions: raw.subscriptions,
            event_subscriptions,
            functions: raw.functions,
            sagas: raw.sagas,
            triggers: raw.triggers,
            projections: raw.projections,
        };
        m.check()?;
        Ok(m)
    }

    /// The directory relative paths are read from.
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// Where a span starts.
    pub fn location(&self, span: std::ops::Range<usize>) -> Location {
        location(&self.text, span.start)
    }

    /// An error about `entry`, at the start of its table.
    pub fn error_at(
        &self,
        entry: impl Into<String>,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            path: self.path.clone(),
            at: Some(self.location(span)),
            entry: Some(entry.into()),
            message: message.into(),
        }
    }

    /// The checks each server-side type makes of its own values, run here so that a bad
    /// value is reported at its entry before anything is applied.
    fn check(&self) -> Result<(), ManifestError> {
        for (name, q) in &self.queues {
            q.get_ref()
                .validate()
                .map_err(|e| self.error_at(format!("queues.{name}"), q.span(), e.to_string()))?;
        }
        for (name, t) in &self.topics {
            t.get_ref()
                .validate()
                .map_err(|e| self.error_at(format!("topics.{name}"), t.span(), e.to_string()))?;
        }
        for (topic, subs) in &self.subscriptions {
            for (name, s) in subs {
                s.get_ref().validate().map_err(|e| {
                    self.error_at(
                        format!("subscriptions.{topic}.{name}"),
                        s.span(),
                        e.to_string(),
                    )
                })?;
            }
        }
        for (name, f) in &self.functions {
            let entry = format!("functions.{name}");
            f.get_ref()
                .settings()
                .validate()
                .map_err(|e| self.error_at(&entry, f.span(), e))?;
            if let Some(b) = &f.get_ref().build {
                if b.command.is_empty() {
                    return Err(self.error_at(&entry, f.span(), "build.command: names no program"));
                }
                if b.sources.is_empty() {
                    return Err(self.error_at(
                        &entry,
                        f.span(),
                        "build.sources: names nothing, so the component would never be rebuilt",
                    ));
                }
            }
        }
        for (name, s) in &self.sagas {
            s.get_ref()
                .validate()
                .map_err(|e| self.error_at(format!("sagas.{name}"), s.span(), e.to_string()))?;
        }
        for (name, t) in &self.triggers {
            t.get_ref()
                .validate()
                .map_err(|e| self.error_at(format!("triggers.{name}"), t.span(), e))?;
        }
        Ok(())
    }
}

/// The dotted name of the field whose value starts at byte `offset`, read from the text:
/// the last table header above it, and the key before the `=` on its line. `None` where
/// the text does not say (an error in a header, or in an inline table's inner keys the
/// key still names the outer field).
fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .replace('"', "")
        });
    if line.trim_start().starts_with('[') {
        // The header itself: its location says it all.
        return None;
    }
    let key = match line.split_once('=') {
        Some((k, _)) if line_start + k.len() < offset => Some(k.trim().replace('"', "")),
        _ => None,
    };
    match (header, key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (h, k) => h.or(k),
    }
}

/// The line and column of byte `offset` in `text`.
fn location(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("sluice.toml"), text.to_owned())
    }

    #[test]
    fn reads_every_kind_of_entry_with_defaults() {
        let m = parse(
            r#"
[app]
name = "shop"

[queues.orders-dlq]

[queues.orders]
max_attempts = 5
dead_letter_queue = "orders-dlq"
lease_timeout = "1m"
fifo = true

[topics.customers]
compaction = { key = "subject" }

[subscriptions.order-placed.billing]
filter = { type = ["order.placed"] }
start = "earliest"

[functions.enrich]
wasm = "build/enrich.wasm"
memory = "64MiB"
env = { TAX = "0.2" }
build = { command = ["make", "enrich"], sources = ["src/enrich.py"] }

[triggers.enrich-orders]
function = "enrich"
source = { queue = "orders" }
batch_size = 10
max_concurrency = 4

[projections.revenue]
function = "revenue"
source = { category = "order" }

[event_subscriptions.order-feed]
category = "order"
max_attempts = 5
dead_letter_queue = "orders-dlq"

[[sagas.checkout.steps]]
name = "reserve"
action = { invoke = { function = "reserve" } }
"#,
        )
        .unwrap();
        assert_eq!(m.app.name.as_deref(), Some("shop"));
        let orders = m.queues.get(&n("orders")).unwrap().get_ref();
        assert_eq!(orders.max_attempts, Some(5));
        assert_eq!(orders.lease_timeout, HumanDuration::from_secs(60));
        assert!(orders.fifo);
        assert_eq!(
            orders.retention,
            QueueConfig::default().retention,
            "unset fields take the server's defaults"
        );
        assert!(
            m.topics
                .get(&n("customers"))
                .unwrap()
                .get_ref()
                .compaction
                .is_some()
        );
        let billing = &m.subscriptions.get(&n("order-placed")).unwrap()[&n("billing")];
        assert_eq!(billing.get_ref().filter["type"][0], "order.placed");
        let f = m.functions.get(&n("enrich")).unwrap().get_ref();
        assert_eq!(f.settings().memory, ByteSize(64 << 20));
        assert_eq!(f.settings().timeout, VersionSettings::default().timeout);
        assert_eq!(f.build.as_ref().unwrap().command, ["make", "enrich"]);
        assert_eq!(
            m.triggers
                .get(&n("enrich-orders"))
                .unwrap()
                .get_ref()
                .batch_size,
            10
        );
        assert_eq!(m.projections.len(), 1);
        let feed = m
            .event_subscriptions
            .get(&n("order-feed"))
            .unwrap()
            .get_ref();
        assert_eq!(feed.selector, EventSelector::Category("order".into()));
        assert_eq!(feed.config.max_attempts, Some(5));
        assert_eq!(feed.settings.len(), 2, "{:?}", feed.settings);
        assert_eq!(
            m.sagas.get(&n("checkout")).unwrap().get_ref().steps.len(),
            1
        );
        // The entry's span starts at its table, so errors can point at it.
        let at = m.location(m.queues.get(&n("orders")).unwrap().span());
        assert_eq!(at.line, 7, "{at:?}");
    }

    /// Every bad manifest is refused with its line and what is wrong.
    #[test]
    fn errors_point_at_the_line_and_name_the_field() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "unknown field",
                "[queues.q]\nmax_atempts = 3\n",
                2,
                "unknown field `max_atempts`",
            ),
            ("unknown section", "[queue.q]\n", 1, "unknown field `queue`"),
            (
                "bad duration",
                "[topics.t]\nretention = \"7 days\"\n",
                2,
                "retention",
            ),
            (
                "value out of range",
                "\n[queues.q]\nlease_timeout = \"0s\"\n",
                2,
                "queues.q: lease_timeout",
            ),
            ("bad name", "[queues.\"-q\"]\n", 1, "name must start"),
            ("syntax", "[topics.t]\nretention = \n", 2, ""),
            (
                "trigger range",
                "[triggers.t]\nfunction = \"f\"\nsource = { queue = \"q\" }\nbatch_size = 5000\n",
                1,
                "triggers.t: batch_size 5000",
            ),
            (
                "function settings",
                "[functions.f]\nwasm = \"f.wasm\"\nmemory = \"1KiB\"\n",
                1,
                "functions.f: memory",
            ),
            (
                "build without sources",
                "[functions.f]\nwasm = \"f.wasm\"\nbuild = { command = [\"make\"], sources = [] }\n",
                1,
                "build.sources",
            ),
            (
                "saga step",
                "[[sagas.s.steps]]\nname = \"a\"\naction = { invoke = { function = \"f\" } }\nretry = { max_attempts = 0 }\n",
                1,
                "sagas.s: steps[0].retry",
            ),
            (
                "event subscription without a selector",
                "\n[event_subscriptions.e]\nmax_attempts = 5\n",
                2,
                "event_subscriptions.e: name exactly one of `category` and `stream`",
            ),
            (
                "event subscription with a bad setting",
                "[event_subscriptions.e]\ncategory = \"order\"\nmax_atempts = 5\n",
                1,
                "event_subscriptions.e: unknown field `max_atempts`",
            ),
            (
                "event subscription with a bad category",
                "[event_subscriptions.e]\ncategory = \"or-der\"\n",
                1,
                "event_subscriptions.e: ",
            ),
            (
                "trigger source",
                "[triggers.t]\nfunction = \"f\"\nsource = { topic = \"x\" }\n",
                3,
                "unknown variant `topic`",
            ),
        ];
        for (what, text, line, contains) in cases {
            let e = parse(text).expect_err(what);
            let shown = e.to_string();
            assert_eq!(e.at.map(|a| a.line), Some(*line), "{what}: {shown}");
            assert!(shown.contains(contains), "{what}: {shown}");
            assert!(shown.starts_with("sluice.toml:"), "{what}: {shown}");
        }
    }

    #[test]
    fn locations_count_lines_and_characters() {
        let text = "ab\ncdé\nf";
        assert_eq!(location(text, 0), Location { line: 1, column: 1 });
        assert_eq!(location(text, 3), Location { line: 2, column: 1 });
        assert_eq!(location(text, 7), Location { line: 2, column: 4 });
        assert_eq!(location(text, 8), Location { line: 3, column: 1 });
        assert_eq!(location(text, 999), Location { line: 3, column: 2 });
    }
}
