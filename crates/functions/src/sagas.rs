//! Saga definitions as stored resources: every put of a definition creates its next
//! immutable version (sagas started on a version keep it), after the definition's own
//! checks and a check that every function, queue and topic it names exists.

use serde::{Deserialize, Serialize};
use sluice_sagas::{Action, SagaDefinition};
use sluice_types::Name;

use crate::{Error, Functions, Result, Target};

/// Most versions kept per definition.
pub const VERSIONS_MAX: u32 = 10_000;

/// One stored version of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionVersion {
    pub name: String,
    pub version: u32,
    pub created_ms: u64,
    pub definition: SagaDefinition,
}

fn key(name: &str, version: u32) -> Vec<u8> {
    let mut k = b"g\0".to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(name: &str) -> Vec<u8> {
    let mut k = b"g\0".to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

impl Functions {
    /// Stores `definition` as the next version of saga definition `name`.
    pub async fn put_saga_definition(
        &self,
        name: &Name,
        definition: SagaDefinition,
    ) -> Result<DefinitionVersion> {
        definition.validate().map_err(|e| Error::InvalidSaga {
            field: e.field,
            message: e.message,
        })?;
        for (i, step) in definition.steps.iter().enumerate() {
            self.check_target(&step.action, &format!("steps[{i}].action"))?;
            if let Some(c) = &step.compensation {
                self.check_target(c, &format!("steps[{i}].compensation"))?;
            }
        }
        let _lock = self.inner.registry_lock.lock().await;
        let version = match self.saga_definition(name.as_str(), None) {
            Ok(latest) => latest.version + 1,
            Err(Error::SagaDefinitionNotFound(_)) => 1,
            Err(e) => return Err(e),
        };
        if version > VERSIONS_MAX {
            return Err(Error::InvalidSaga {
                field: "name".into(),
                message: format!("{name} has {VERSIONS_MAX} versions, the most kept"),
            });
        }
        let stored = DefinitionVersion {
            name: name.to_string(),
            version,
            created_ms: self.inner.clock.now_ms(),
            definition,
        };
        let store = &self.inner.store;
        let mut batch = store.batch();
        batch.put(
            &self.inner.ks,
            key(name.as_str(), version),
            crate::encode(&stored),
        );
        store.commit(batch).await?;
        Ok(stored)
    }

    /// Whether what `action` names exists.
    fn check_target(&self, action: &Action, field: &str) -> Result<()> {
        let missing = |what: &str, name: &str| Error::InvalidSaga {
            field: field.to_owned(),
            message: format!("{what} {name:?} does not exist"),
        };
        match action {
            Action::Invoke { function, .. } => {
                match self.resolve(function, &Target::Alias(crate::LIVE.into())) {
                    Ok(_) => {}
                    Err(Error::FunctionNotFound(_)) | Err(Error::AliasNotFound { .. }) => {
                        return Err(missing("function", function));
                    }
                    Err(e) => return Err(e),
                }
            }
            Action::Send { queue, .. } => {
                if self.inner.broker.get_queue(queue).is_err() {
                    return Err(missing("queue", queue));
                }
            }
            Action::Publish { topic, .. } => {
                if self.inner.broker.get_topic(topic).is_err() {
                    return Err(missing("topic", topic));
                }
            }
        }
        Ok(())
    }

    /// Version `version` of saga definition `name` (default: the latest).
    pub fn saga_definition(&self, name: &str, version: Option<u32>) -> Result<DefinitionVersion> {
        let ks = &self.inner.ks;
        let raw = match version {
            Some(v) => ks.get(&key(name, v))?,
            None => {
                let p = prefix(name);
                let end = {
                    let mut e = p.clone();
                    e.push(0xff);
                    e
                };
                ks.range_rev(&p, &end, 1)?
                    .into_iter()
                    .next()
                    .map(|(_, v)| v)
            }
        };
        let raw = raw.ok_or_else(|| match version {
            Some(v) => Error::SagaDefinitionNotFound(format!("{name} version {v}")),
            None => Error::SagaDefinitionNotFound(name.to_owned()),
        })?;
        serde_json::from_slice(&raw).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// The latest version of every saga definition, by name.
    pub fn saga_definitions(&self) -> Result<Vec<DefinitionVersion>> {
        let mut out: Vec<DefinitionVersion> = Vec::new();
        for (_, v) in self.inner.ks.range(b"g\0", b"g\x01", usize::MAX)? {
            let d: DefinitionVersion =
                serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
            match out.last_mut() {
                Some(last) if last.name == d.name => *last = d,
                _ => out.push(d),
            }
        }
        Ok(out)
    }

    /// Saga definitions whose latest version invokes `function`.
    pub fn sagas_using(&self, function: &str) -> Result<Vec<String>> {
        Ok(self
            .saga_definitions()?
            .into_iter()
            .filter(|d| {
                d.definition.steps.iter().any(|s| {
                    std::iter::once(&s.action)
                        .chain(s.compensation.as_ref())
                        .any(|a| matches!(a, Action::Invoke { function: f, .. } if f == function))
                })
            })
            .map(|d| d.name)
            .collect())
    }

    /// Deletes every version of saga definition `name`.
    pub async fn delete_saga_definition(&self, name: &str) -> Result<()> {
        let _lock = self.inner.registry_lock.lock().await;
        self.saga_definition(name, None)?;
        let p = prefix(name);
        let mut end = p.clone();
        end.push(0xff);
        let store = &self.inner.store;
        let mut batch = store.batch();
        for k in self.inner.ks.keys(&p, &end, usize::MAX)? {
            batch.delete(&self.inner.ks, k);
        }
        store.commit(batch).await?;
        Ok(())
    }
}
