//! Instances the host starts on its own, for work that outlives any one call: the driver of an
//! MCP connection lives as long as the connection. A capability that needs one asks the
//! calling store's [`Background`] to start an export of the same component, with a *role*
//! that only the host can give (the instance's host calls check it). It runs under the
//! component's policy and memory limit, with no call deadline (the capability ends it), and
//! yields at every epoch tick like any call. Every store of a component, for a call or in the
//! background, is made here ([`Background::store`]), so both get the same policy, limits and
//! services.

use std::collections::BTreeMap;
use std::sync::Arc;

use capbridge_policy::Policy;
use wasmtime::component::{ComponentExportIndex, InstancePre, Val};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::audit::AuditLog;
use crate::caps::events::EventBus;
use crate::caps::Services;
use crate::state::HostState;

/// Starts background instances of one component; cheap to clone.
#[derive(Clone)]
pub struct Background(Arc<Inner>);

struct Inner {
    engine: Engine,
    pre: InstancePre<HostState>,
    exports: BTreeMap<String, ComponentExportIndex>,
    policy: Arc<Policy>,
    events: EventBus,
    services: Services,
    audit: AuditLog,
}

/// How a background instance ended.
#[derive(Debug)]
pub struct Ended {
    /// `Err` when it trapped (the trap, in words).
    pub outcome: Result<(), String>,
    /// What it wrote to its standard error (up to the policy's output limit).
    pub stderr: String,
}

impl Background {
    pub(crate) fn new(
        engine: Engine,
        pre: InstancePre<HostState>,
        exports: BTreeMap<String, ComponentExportIndex>,
        policy: Arc<Policy>,
        events: EventBus,
        services: Services,
        audit: AuditLog,
    ) -> Self {
        Self(Arc::new(Inner {
            engine,
            pre,
            exports,
            policy,
            events,
            services,
            audit,
        }))
    }

    /// A new store of the component for `session`, under its policy and limits, able to start
    /// background instances itself. Every instance of the component lives in one of these.
    pub(crate) fn store(&self, session: Option<u64>) -> anyhow::Result<Store<HostState>> {
        let inner = &self.0;
        let mut state = HostState::new(
            inner.policy.clone(),
            inner.events.clone(),
            inner.services.clone(),
            inner.audit.clone(),
            session,
        )?;
        state.grants.background = Some(self.clone());
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limits);
        Ok(store)
    }

    /// The component's id.
    pub fn component(&self) -> &str {
        &self.0.policy.component_id
    }

    /// Calls `export` with `params` in a new instance whose host calls see `role`; returns
    /// when the export returns. Dropping the future ends the instance.
    pub fn run(
        &self,
        export: &str,
        params: Vec<Val>,
        role: String,
    ) -> Result<impl std::future::Future<Output = Ended> + Send + 'static, String> {
        let inner = self.0.clone();
        let index = *inner.exports.get(export).ok_or_else(|| {
            format!(
                "component `{}` has no export `{export}`",
                inner.policy.component_id
            )
        })?;
        let mut store = self.store(None).map_err(|e| format!("{e:#}"))?;
        store.data_mut().grants.role = Some(role);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1);
        Ok(async move {
            let outcome = async {
                let instance = inner.pre.instantiate_async(&mut store).await?;
                let f = instance
                    .get_func(&mut store, index)
                    .ok_or_else(|| wasmtime::format_err!("export vanished from its instance"))?;
                let mut results = vec![Val::Bool(false); f.ty(&store).results().len()];
                f.call_async(&mut store, &params, &mut results).await?;
                Ok::<_, wasmtime::Error>(())
            }
            .await
            .map_err(|e| format!("{e:#}"));
            let stderr = store.data().stderr.take();
            Ended {
                outcome,
                stderr: String::from_utf8_lossy(&stderr.bytes).into_owned(),
            }
        })
    }
}
