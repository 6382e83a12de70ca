//! What a component exports, and the JSON forms of each function's arguments and result.

use serde_json::Value;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex};
use wasmtime::Engine;

use super::ExportInfo;
use crate::values;

pub(super) struct FoundFunction {
    pub(super) func: ComponentFunc,
}

/// Every exported function, top-level and inside exported interfaces, with the reason it cannot
/// be called with JSON, if any.
pub(super) fn exported_functions(
    engine: &Engine,
    component: &Component,
) -> Vec<(String, (FoundFunction, Option<String>))> {
    let mut out = Vec::new();
    let ty = component.component_type();
    for (name, export) in ty.exports(engine) {
        match export.ty {
            ComponentItem::ComponentFunc(func) => out.push((name.to_string(), func)),
            ComponentItem::ComponentInstance(instance) => {
                let short = interface_short_name(name);
                for (fname, item) in instance.exports(engine) {
                    if let ComponentItem::ComponentFunc(func) = item.ty {
                        out.push((format!("{short}.{fname}"), func));
                    }
                }
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|(name, func)| {
            let unsupported = unsupported_reason(&name, &func);
            (name, (FoundFunction { func }, unsupported))
        })
        .collect()
}

fn unsupported_reason(name: &str, func: &ComponentFunc) -> Option<String> {
    if name.contains('[') {
        return Some("it is a resource constructor or method".into());
    }
    let params = values::object_schema(func.params().map(|(n, t)| (n.to_string(), t)));
    let result = func
        .results()
        .map(|t| values::schema(&t))
        .collect::<Result<Vec<_>, _>>();
    params.err().or(result.err()).map(|e| e.to_string())
}

/// `capbridge:echo/api@0.1.0` → `api`.
fn interface_short_name(name: &str) -> &str {
    let without_version = name.split('@').next().unwrap_or(name);
    without_version
        .rsplit('/')
        .next()
        .unwrap_or(without_version)
}

pub(super) fn lookup_export(component: &Component, name: &str) -> Option<ComponentExportIndex> {
    if let Some(index) = component.get_export_index(None, name) {
        return Some(index);
    }
    let (short, fname) = name.split_once('.')?;
    let ty = component.component_type();
    let engine = component.engine();
    let (iface, _) = ty
        .exports(engine)
        .find(|(n, _)| interface_short_name(n) == short)?;
    let parent = component.get_export_index(None, iface)?;
    component.get_export_index(Some(&parent), fname)
}

pub(super) fn export_info(
    name: &str,
    found: &FoundFunction,
    unsupported: Option<String>,
) -> ExportInfo {
    let params: Vec<String> = found
        .func
        .params()
        .map(|(n, t)| format!("{n}: {}", values::type_name(&t)))
        .collect();
    let result = found.func.results().next();
    let signature = match &result {
        Some(t) => format!("{name}({}) -> {}", params.join(", "), values::type_name(t)),
        None => format!("{name}({})", params.join(", ")),
    };
    let fallible = matches!(result, Some(Type::Result(_)));
    let (params_schema, result_schema) = if unsupported.is_some() {
        (None, None)
    } else {
        (
            values::object_schema(found.func.params().map(|(n, t)| (n.to_string(), t))).ok(),
            Some(
                result
                    .map_or(Ok(serde_json::json!({ "type": "null" })), |t| {
                        values::schema(&t)
                    })
                    .unwrap_or(Value::Null),
            ),
        )
    };
    ExportInfo {
        name: name.to_string(),
        signature,
        params_schema,
        result_schema,
        fallible,
        unsupported,
    }
}
