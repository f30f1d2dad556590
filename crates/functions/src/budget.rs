//! Cost and budgets, the pure part: usage counters, the price table that turns usage into
//! an estimated cost, budget periods, and the gate that decides whether a trigger may
//! start another invocation. No I/O and no clock reads; table tests below.

use serde::{Deserialize, Serialize};

/// What was used by one function, trigger, queue or topic in some span of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub invocations: u64,
    /// Memory limit × duration of invocations, in GB-seconds (GiB, as Lambda bills).
    pub gb_seconds: f64,
    pub fuel: u64,
    /// API operations: sends, receives, acks, nacks for a queue; publishes for a topic.
    pub requests: u64,
    /// Bytes retained × seconds, for storage cost.
    pub byte_seconds: f64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.invocations += other.invocations;
        self.gb_seconds += other.gb_seconds;
        self.fuel += other.fuel;
        self.requests += other.requests;
        self.byte_seconds += other.byte_seconds;
    }

    /// One invocation with `memory_bytes` of memory limit for `duration_us`.
    pub fn invocation(memory_bytes: u64, duration_us: u64, fuel: u64) -> Self {
        Self {
            invocations: 1,
            gb_seconds: memory_bytes as f64 / GIB * duration_us as f64 / 1e6,
            fuel,
            ..Self::default()
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;
/// Seconds in the 30-day month storage prices are quoted per.
const MONTH_SECONDS: f64 = 30.0 * 86_400.0;

/// Prices in US dollars. The defaults follow public serverless list prices (AWS Lambda,
/// SQS, SNS; block storage) and are estimates, not a bill.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// Per million function invocations.
    pub invocations_per_million: f64,
    /// Per GB-second of function memory × time.
    pub gb_second: f64,
    /// Per billion units of WebAssembly fuel (0: fuel is not priced).
    pub fuel_per_billion: f64,
    /// Per million queue operations.
    pub queue_requests_per_million: f64,
    /// Per million topic publishes.
    pub topic_requests_per_million: f64,
    /// Per GB-month of retained messages and events.
    pub storage_gb_month: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            invocations_per_million: 0.20,
            gb_second: 0.000_016_666_7,
            fuel_per_billion: 0.0,
            queue_requests_per_million: 0.40,
            topic_requests_per_million: 0.50,
            storage_gb_month: 0.10,
        }
    }
}

impl Prices {
    /// Checks every price is a finite, non-negative number; names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("invocations_per_million", self.invocations_per_million),
            ("gb_second", self.gb_second),
            ("fuel_per_billion", self.fuel_per_billion),
            (
                "queue_requests_per_million",
                self.queue_requests_per_million,
            ),
            (
                "topic_requests_per_million",
                self.topic_requests_per_million,
            ),
            ("storage_gb_month", self.storage_gb_month),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name}: {v} is not a price (a number ≥ 0)"));
            }
        }
        Ok(())
    }
}

/// What usage is metered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Function,
    Trigger,
    Queue,
    Topic,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Function => "function",
            Kind::Trigger => "trigger",
            Kind::Queue => "queue",
            Kind::Topic => "topic",
        }
    }
}

/// An estimated cost, by what it pays for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cost {
    pub requests: f64,
    pub compute: f64,
    pub storage: f64,
    pub total: f64,
}

/// The estimated cost of `usage` of something of `kind`.
pub fn cost(kind: Kind, usage: &Usage, p: &Prices) -> Cost {
    let per_request = match kind {
        Kind::Function | Kind::Trigger => p.invocations_per_million,
        Kind::Queue => p.queue_requests_per_million,
        Kind::Topic => p.topic_requests_per_million,
    } / 1e6;
    let requests = (usage.invocations + usage.requests) as f64 * per_request;
    let compute = usage.gb_seconds * p.gb_second + usage.fuel as f64 / 1e9 * p.fuel_per_billion;
    let storage = usage.byte_seconds / 1e9 / MONTH_SECONDS * p.storage_gb_month;
    Cost {
        requests,
        compute,
        storage,
        total: requests + compute + storage,
    }
}

/// The span a budget counts over; periods start at UTC boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
    Month,
}

/// The start and end (exclusive) of the period holding `now_ms`.
pub fn period_bounds(period: Period, now_ms: u64) -> (u64, u64) {
    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;
    match period {
        Period::Hour => (now_ms / HOUR * HOUR, now_ms / HOUR * HOUR + HOUR),
        Period::Day => (now_ms / DAY * DAY, now_ms / DAY * DAY + DAY),
        Period::Month => sluice_types::month_bounds_ms(now_ms),
    }
}

/// What a budget covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scope {
    /// Everything: every function, trigger, queue and topic.
    App,
    Function(String),
    Trigger(String),
}

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Limit {
    Invocations(u64),
    GbSeconds(f64),
    /// Estimated cost in US dollars, by the price table.
    CostUsd(f64),
}

/// A budget's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub scope: Scope,
    pub period: Period,
    pub limit: Limit,
    /// The share of the limit at which a warning alert goes out (default 0.8).
    #[serde(default = "soft")]
    pub soft_threshold: f64,
}

fn soft() -> f64 {
    0.8
}

impl BudgetConfig {
    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.soft_threshold > 0.0 && self.soft_threshold <= 1.0) {
            return Err(format!(
                "soft_threshold: {} is not in (0, 1]",
                self.soft_threshold
            ));
        }
        match self.limit {
            Limit::Invocations(0) => Err("limit.invocations: must be at least 1".into()),
            Limit::GbSeconds(v) | Limit::CostUsd(v) if !(v.is_finite() && v > 0.0) => {
                Err(format!("limit: {v} is not a positive number"))
            }
            _ => Ok(()),
        }
    }

    /// The limit as a number in its own unit.
    pub fn limit_value(&self) -> f64 {
        match self.limit {
            Limit::Invocations(n) => n as f64,
            Limit::GbSeconds(v) | Limit::CostUsd(v) => v,
        }
    }

    /// What the budget has spent, in its limit's unit, given the usage of its scope in
    /// the period (for a cost limit: the cost of each kind's usage).
    pub fn spent(&self, usage: &[(Kind, Usage)], prices: &Prices) -> f64 {
        usage
            .iter()
            .map(|(kind, u)| match self.limit {
                Limit::Invocations(_) => u.invocations as f64,
                Limit::GbSeconds(_) => u.gb_seconds,
                Limit::CostUsd(_) => cost(*kind, u, prices).total,
            })
            .sum()
    }

    /// Whether a usage of this kind and name counts against the budget. Function and
    /// trigger usage is the same invocations seen twice: an app budget counts functions,
    /// not triggers, so nothing is counted twice.
    pub fn covers(&self, kind: Kind, name: &str) -> bool {
        match &self.scope {
            Scope::App => kind != Kind::Trigger,
            Scope::Function(f) => kind == Kind::Function && f == name,
            Scope::Trigger(t) => kind == Kind::Trigger && t == name,
        }
    }

    /// Whether the budget governs a trigger of `function`: it pauses it when exhausted.
    pub fn governs(&self, trigger: &str, function: &str) -> bool {
        match &self.scope {
            Scope::App => true,
            Scope::Function(f) => f == function,
            Scope::Trigger(t) => t == trigger,
        }
    }
}

/// Where a budget stands in its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Ok,
    /// At or past the soft threshold.
    Warning,
    /// At or past the limit: the triggers it governs are paused.
    Exhausted,
}

/// Where a budget stands having spent `spent` with `reserved` more committed to
/// invocations already started (an invocation budget counts them, so concurrent starts
/// cannot overshoot it).
pub fn standing(config: &BudgetConfig, spent: f64, reserved: f64) -> Standing {
    let limit = config.limit_value();
    let used = spent + reserved;
    if used >= limit {
        Standing::Exhausted
    } else if used >= limit * config.soft_threshold {
        Standing::Warning
    } else {
        Standing::Ok
    }
}

/// The alert due when a budget moves from `before` to `after` within one period: each
/// goes out once per period, on the way up.
pub fn alert_due(before: Standing, after: Standing) -> Option<&'static str> {
    match (before, after) {
        (Standing::Ok, Standing::Warning) => Some("budget.warning"),
        (Standing::Ok | Standing::Warning, Standing::Exhausted) => Some("budget.exhausted"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: Limit) -> BudgetConfig {
        BudgetConfig {
            scope: Scope::Function("f".into()),
            period: Period::Day,
            limit,
            soft_threshold: 0.8,
        }
    }

    #[test]
    fn costs_follow_the_price_table() {
        let p = Prices::default();
        // (kind, usage, expected total)
        let million = Usage {
            invocations: 1_000_000,
            ..Usage::default()
        };
        let compute = Usage {
            gb_seconds: 1_000.0,
            ..Usage::default()
        };
        let requests = Usage {
            requests: 2_000_000,
            ..Usage::default()
        };
        let stored = Usage {
            byte_seconds: 1e9 * MONTH_SECONDS,
            ..Usage::default()
        };
        let cases = [
            (Kind::Function, million, 0.20),
            (Kind::Function, compute, 0.016_666_7),
            (Kind::Queue, requests, 0.80),
            (Kind::Topic, requests, 1.00),
            (Kind::Topic, stored, 0.10),
            (Kind::Queue, Usage::default(), 0.0),
        ];
        for (kind, usage, want) in cases {
            let got = cost(kind, &usage, &p).total;
            assert!(
                (got - want).abs() < 1e-9,
                "{kind:?} {usage:?}: {got} != {want}"
            );
        }
        // 128 MiB for 1 s is 1/8 GB-second.
        let one = Usage::invocation(128 << 20, 1_000_000, 7);
        assert_eq!((one.invocations, one.gb_seconds, one.fuel), (1, 0.125, 7));
    }

    #[test]
    fn standing_table() {
        // (limit, spent, reserved, standing)
        let cases = [
            (Limit::Invocations(100), 0.0, 0.0, Standing::Ok),
            (Limit::Invocations(100), 79.0, 0.0, Standing::Ok),
            (Limit::Invocations(100), 79.0, 1.0, Standing::Warning),
            (Limit::Invocations(100), 99.0, 0.0, Standing::Warning),
            (Limit::Invocations(100), 99.0, 1.0, Standing::Exhausted),
            (Limit::Invocations(100), 150.0, 0.0, Standing::Exhausted),
            (Limit::GbSeconds(10.0), 7.9, 0.0, Standing::Ok),
            (Limit::GbSeconds(10.0), 8.0, 0.0, Standing::Warning),
            (Limit::CostUsd(1.0), 1.0, 0.0, Standing::Exhausted),
        ];
        for (limit, spent, reserved, want) in cases {
            assert_eq!(
                standing(&budget(limit), spent, reserved),
                want,
                "{limit:?} {spent} {reserved}"
            );
        }
        assert_eq!(
            alert_due(Standing::Ok, Standing::Warning),
            Some("budget.warning")
        );
        assert_eq!(
            alert_due(Standing::Ok, Standing::Exhausted),
            Some("budget.exhausted")
        );
        assert_eq!(
            alert_due(Standing::Warning, Standing::Exhausted),
            Some("budget.exhausted")
        );
        assert_eq!(alert_due(Standing::Warning, Standing::Warning), None);
        assert_eq!(alert_due(Standing::Exhausted, Standing::Ok), None);
    }

    #[test]
    fn scopes_cover_and_govern() {
        let app = BudgetConfig {
            scope: Scope::App,
            ..budget(Limit::Invocations(1))
        };
        assert!(app.covers(Kind::Function, "f") && app.covers(Kind::Queue, "q"));
        assert!(
            !app.covers(Kind::Trigger, "t"),
            "counted once, as the function"
        );
        assert!(app.governs("t", "f"));
        let f = budget(Limit::Invocations(1));
        assert!(f.covers(Kind::Function, "f") && !f.covers(Kind::Function, "g"));
        assert!(f.governs("any", "f") && !f.governs("any", "g"));
        let t = BudgetConfig {
            scope: Scope::Trigger("t".into()),
            ..budget(Limit::Invocations(1))
        };
        assert!(t.covers(Kind::Trigger, "t") && !t.covers(Kind::Function, "t"));
        assert!(t.governs("t", "f") && !t.governs("u", "f"));
        // Spent by limit kind.
        let usage = [
            (Kind::Function, Usage::invocation(1 << 30, 2_000_000, 0)),
            (
                Kind::Queue,
                Usage {
                    requests: 1_000_000,
                    ..Usage::default()
                },
            ),
        ];
        let p = Prices::default();
        assert_eq!(budget(Limit::Invocations(5)).spent(&usage, &p), 1.0);
        assert_eq!(budget(Limit::GbSeconds(5.0)).spent(&usage, &p), 2.0);
        let usd = budget(Limit::CostUsd(5.0)).spent(&usage, &p);
        assert!(
            (usd - (0.2e-6 + 2.0 * 0.000_016_666_7 + 0.40)).abs() < 1e-9,
            "{usd}"
        );
    }

    #[test]
    fn periods_and_validation() {
        let t = |s: &str| sluice_types::parse_rfc3339_ms(s).unwrap();
        let now = t("2026-11-30T15:42:10Z");
        assert_eq!(
            period_bounds(Period::Hour, now),
            (t("2026-11-30T15:00:00Z"), t("2026-11-30T16:00:00Z"))
        );
        assert_eq!(
            period_bounds(Period::Day, now),
            (t("2026-11-30T00:00:00Z"), t("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            period_bounds(Period::Month, now),
            (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"))
        );
        for (config, field) in [
            (budget(Limit::Invocations(0)), "limit.invocations"),
            (budget(Limit::GbSeconds(-1.0)), "limit"),
            (budget(Limit::CostUsd(f64::NAN)), "limit"),
            (
                BudgetConfig {
                    soft_threshold: 1.5,
                    ..budget(Limit::Invocations(1))
                },
                "soft_threshold",
            ),
        ] {
            assert!(
                config.validate().unwrap_err().starts_with(field),
                "{config:?}"
            );
        }
        assert!(budget(Limit::Invocations(1)).validate().is_ok());
        let bad = Prices {
            gb_second: -1.0,
            ..Prices::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("gb_second"));
    }
}
