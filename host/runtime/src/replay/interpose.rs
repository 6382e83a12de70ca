//! The interposing linker: every import of a component defined dynamically, answered by the
//! store's [`Session`]: the real host (through the pass-through component) while recording, the
//! trace while replaying.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{
    Component, Func, Linker, ResourceAny, ResourceDynamic, ResourceType, Val,
};
use wasmtime::{bail, format_err};
use wasmtime::{Engine, StoreContextMut};

use super::value::{from_json, map_resources, to_json, Budget};
use super::{Divergence, HostCall, Outcome};
use crate::state::HostState;

/// What answers a component's host calls in one store.
pub(crate) struct Session {
    mode: Mode,
    budget: Budget,
    /// Record: the calls made so far. Replay: the calls still expected, next first.
    calls: VecDeque<HostCall>,
    /// Replay: how many calls were answered.
    answered: usize,
    pub(crate) divergence: Option<Divergence>,
}

enum Mode {
    Record {
        /// `(import, function)` → the pass-through export that calls the real host.
        forwards: HashMap<(String, String), Func>,
        /// The real resources behind the component's proxy handles.
        real: HashMap<u32, ResourceAny>,
        next_proxy: u32,
    },
    Replay,
}

impl Session {
    pub(crate) fn record(forwards: HashMap<(String, String), Func>, budget: Budget) -> Self {
        Self {
            mode: Mode::Record {
                forwards,
                real: HashMap::new(),
                next_proxy: 1,
            },
            budget,
            calls: VecDeque::new(),
            answered: 0,
            divergence: None,
        }
    }

    pub(crate) fn replay(expected: Vec<HostCall>, budget: Budget) -> Self {
        Self {
            mode: Mode::Replay,
            budget,
            calls: expected.into(),
            answered: 0,
            divergence: None,
        }
    }

    /// Record: every call made. Replay: the calls never made.
    pub(crate) fn into_calls(self) -> Vec<HostCall> {
        self.calls.into()
    }

    pub(crate) fn answered(&self) -> usize {
        self.answered
    }
}

fn session<'a>(store: &'a mut StoreContextMut<'_, HostState>) -> wasmtime::Result<&'a mut Session> {
    store
        .data_mut()
        .replay
        .as_mut()
        .ok_or_else(|| format_err!("no recording or replay session in this store"))
}

/// The imported resource types of a component, numbered: proxy handles are
/// `ResourceType::host_dynamic(n)`.
#[derive(Default)]
struct Kinds(Vec<ResourceType>);

impl Kinds {
    fn of(&self, ty: &Type) -> wasmtime::Result<u32> {
        let (Type::Own(rt) | Type::Borrow(rt)) = ty else {
            bail!("not a resource type");
        };
        (0..self.0.len())
            .find(|&k| self.0[k] == *rt || ResourceType::host_dynamic(k as u32) == *rt)
            .map(|k| k as u32)
            .ok_or_else(|| format_err!("a resource type the component does not import"))
    }
}

/// A linker defining every import of `component` dynamically.
pub(crate) fn linker(
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    let mut kinds = Kinds::default();
    let ty = component.component_type();
    // Resource types first: functions of any interface may name them.
    for (_, item) in ty.imports(engine) {
        if let ComponentItem::ComponentInstance(instance) = item.ty {
            for (_, item) in instance.exports(engine) {
                // An interface that `use`s another's resource exports the same type again.
                if let ComponentItem::Resource(rt) = item.ty {
                    if !kinds.0.contains(&rt) {
                        kinds.0.push(rt);
                    }
                }
            }
        }
    }
    let kinds = Arc::new(kinds);
    for (import, item) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            bail!("`{import}`: only imported interfaces can be recorded, not root-level items");
        };
        let mut scope = linker.instance(import)?;
        for (name, item) in instance.exports(engine) {
            let key = Arc::new((import.to_string(), name.to_string()));
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let kinds = kinds.clone();
                    scope.func_new_async(name, move |store, ty, params, results| {
                        let key = key.clone();
                        let kinds = kinds.clone();
                        Box::new(
                            async move { answer(store, &key, &kinds, ty, params, results).await },
                        )
                    })?;
                }
                ComponentItem::Resource(rt) => {
                    let k = kinds.of(&Type::Own(rt))?;
                    let drop_key = Arc::new((import.to_string(), format!("[resource-drop]{name}")));
                    scope.resource_async(
                        name,
                        ResourceType::host_dynamic(k),
                        move |store, rep| {
                            let key = drop_key.clone();
                            Box::new(async move { drop_proxy(store, &key, rep).await })
                        },
                    )?;
                }
                ComponentItem::Type(_) => {}
                _ => bail!("`{import}` `{name}`: only functions and resources can be recorded"),
            }
        }
    }
    Ok(linker)
}

async fn answer(
    mut store: StoreContextMut<'_, HostState>,
    key: &(String, String),
    kinds: &Kinds,
    ty: ComponentFunc,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let param_types: Vec<(String, Type)> = ty.params().map(|(n, t)| (n.to_string(), t)).collect();
    let result_type = ty.results().next();
    let mut budget = session(&mut store)?.budget;

    // The component's proxies: their numbers for the trace, the real resources for the host.
    let mut numbers = VecDeque::new();
    let mut args = Vec::with_capacity(params.len());
    for (val, (_, t)) in params.iter().zip(&param_types) {
        args.push(map_resources(val.clone(), t, &mut |proxy, _| {
            let handle = ResourceDynamic::try_from_resource_any(proxy, &mut store)?;
            let n = handle.rep();
            numbers.push_back(n);
            match &mut session(&mut store)?.mode {
                Mode::Record { real, .. } => if handle.owned() {
                    real.remove(&n)
                } else {
                    real.get(&n).copied()
                }
                .ok_or_else(|| format_err!("resource {n} is not live")),
                Mode::Replay => Ok(proxy),
            }
        })?);
    }
    let mut json_args = Map::new();
    for (val, (name, _)) in args.iter().zip(&param_types) {
        let v = to_json(val, &mut budget, &mut |_| {
            numbers
                .pop_front()
                .ok_or_else(|| format_err!("resource numbering lost its place"))
        })?;
        json_args.insert(name.clone(), v);
    }
    session(&mut store)?.budget = budget;
    let mut call = HostCall {
        interface: key.0.clone(),
        function: key.1.clone(),
        args: json_args,
        outcome: Outcome::Result(Value::Null),
    };

    let forward = match &session(&mut store)?.mode {
        Mode::Record { forwards, .. } => Some(
            *forwards
                .get(key)
                .ok_or_else(|| format_err!("`{}` `{}` has no pass-through", key.0, key.1))?,
        ),
        Mode::Replay => None,
    };
    match forward {
        Some(func) => {
            let mut out = vec![Val::Bool(false); results.len()];
            if let Err(error) = func.call_async(&mut store, &args, &mut out).await {
                call.outcome = Outcome::Trap(format!("{error:#}"));
                session(&mut store)?.calls.push_back(call);
                return Err(error);
            }
            let mut numbers = VecDeque::new();
            for (slot, val) in results.iter_mut().zip(out) {
                let t = result_type
                    .clone()
                    .ok_or_else(|| format_err!("no result type"))?;
                *slot = map_resources(val, &t, &mut |real, t| {
                    let k = kinds.of(t)?;
                    let Mode::Record {
                        real: reals,
                        next_proxy,
                        ..
                    } = &mut session(&mut store)?.mode
                    else {
                        bail!("not recording");
                    };
                    let n = *next_proxy;
                    *next_proxy += 1;
                    reals.insert(n, real);
                    numbers.push_back(n);
                    ResourceDynamic::new_own(n, k).try_into_resource_any(&mut store)
                })?;
            }
            let result = match results.first() {
                Some(v) => to_json(v, &mut budget, &mut |_| {
                    numbers
                        .pop_front()
                        .ok_or_else(|| format_err!("resource numbering lost its place"))
                })?,
                None => Value::Null,
            };
            call.outcome = Outcome::Result(result);
            let session = session(&mut store)?;
            session.budget = budget;
            session.calls.push_back(call);
            Ok(())
        }
        None => {
            let expected = expect(&mut store, call)?;
            match expected.outcome {
                Outcome::Trap(message) => Err(format_err!(message)),
                Outcome::Result(json) => {
                    if let (Some(slot), Some(t)) = (results.first_mut(), result_type) {
                        *slot = from_json(&t, &json, &mut |t, n| {
                            ResourceDynamic::new_own(n, kinds.of(t)?)
                                .try_into_resource_any(&mut store)
                        })?;
                    }
                    Ok(())
                }
            }
        }
    }
}

/// Replay: the next expected call, which must be `actual`; else the divergence, as an error.
fn expect(
    store: &mut StoreContextMut<'_, HostState>,
    actual: HostCall,
) -> wasmtime::Result<HostCall> {
    let session = session(store)?;
    match session.calls.pop_front() {
        Some(expected) if expected.same_call(&actual) => {
            session.answered += 1;
            Ok(expected)
        }
        expected => {
            let divergence = Divergence {
                at: session.answered,
                expected,
                actual: Some(actual),
                trap: None,
            };
            let message = divergence.to_string();
            session.divergence = Some(divergence);
            Err(format_err!(message))
        }
    }
}

async fn drop_proxy(
    mut store: StoreContextMut<'_, HostState>,
    key: &(String, String),
    n: u32,
) -> wasmtime::Result<()> {
    let mut args = Map::new();
    args.insert("self".into(), serde_json::json!({ "resource": n }));
    let call = HostCall {
        interface: key.0.clone(),
        function: key.1.clone(),
        args,
        outcome: Outcome::Result(Value::Null),
    };
    let real = match &mut session(&mut store)?.mode {
        Mode::Record { real, .. } => Some(real.remove(&n)),
        Mode::Replay => None,
    };
    match real {
        Some(real) => {
            if let Some(real) = real {
                real.resource_drop_async(&mut store).await?;
            }
            session(&mut store)?.calls.push_back(call);
            Ok(())
        }
        None => expect(&mut store, call).map(|_| ()),
    }
}
