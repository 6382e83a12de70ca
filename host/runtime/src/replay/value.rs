//! The trace's JSON form of host-call values: lossless, so a replay can rebuild them.
//!
//! Like the contract's mapping (`crate::values`) where that is lossless, with these differences:
//!
//! | WIT | trace JSON |
//! |---|---|
//! | `list<u8>` | `{"utf8": "…"}` when the bytes are UTF-8, else `{"base64": "…"}` |
//! | `option<T>` | `null` or `{"some": value}` |
//! | `f32`, `f64` not finite | `"NaN"`, `"inf"`, `"-inf"` |
//! | `own<R>`, `borrow<R>` | `{"resource": n}`: the handle's number in this call |
//! | a byte list over the trace's caps | `{"omitted": length}` (cannot be replayed) |

use base64::Engine as _;
use serde_json::{json, Map, Value};
use wasmtime::component::types::Type;
use wasmtime::component::{ResourceAny, Val};
use wasmtime::{bail, format_err};

/// How many bytes of byte lists a trace may still keep: each list at most `per_value`, all of
/// them together `remaining`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub per_value: usize,
    pub remaining: usize,
}

/// Turns `val` into trace JSON; `resource` numbers each resource met, in order.
pub fn to_json(
    val: &Val,
    budget: &mut Budget,
    resource: &mut dyn FnMut(&ResourceAny) -> wasmtime::Result<u32>,
) -> wasmtime::Result<Value> {
    Ok(match val {
        Val::Bool(b) => json!(b),
        Val::S8(n) => json!(n),
        Val::U8(n) => json!(n),
        Val::S16(n) => json!(n),
        Val::U16(n) => json!(n),
        Val::S32(n) => json!(n),
        Val::U32(n) => json!(n),
        Val::S64(n) => json!(n),
        Val::U64(n) => json!(n),
        Val::Float32(f) => float(f64::from(*f)),
        Val::Float64(f) => float(*f),
        Val::Char(c) => json!(c.to_string()),
        Val::String(s) => json!(s),
        Val::List(items) if !items.is_empty() && items.iter().all(|v| matches!(v, Val::U8(_))) => {
            let bytes: Vec<u8> = items
                .iter()
                .map(|v| match v {
                    Val::U8(b) => *b,
                    _ => 0,
                })
                .collect();
            bytes_to_json(&bytes, budget)
        }
        Val::List(items) | Val::Tuple(items) => Value::Array(
            items
                .iter()
                .map(|v| to_json(v, budget, resource))
                .collect::<wasmtime::Result<_>>()?,
        ),
        Val::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v, budget, resource)?)))
                .collect::<wasmtime::Result<Map<_, _>>>()?,
        ),
        Val::Variant(case, None) | Val::Enum(case) => json!(case),
        Val::Variant(case, Some(payload)) => {
            json!({ case: to_json(payload, budget, resource)? })
        }
        Val::Option(None) => Value::Null,
        Val::Option(Some(v)) => json!({ "some": to_json(v, budget, resource)? }),
        Val::Result(r) => {
            let (side, v) = match r {
                Ok(v) => ("ok", v),
                Err(v) => ("err", v),
            };
            let v = match v {
                Some(v) => to_json(v, budget, resource)?,
                None => Value::Null,
            };
            json!({ side: v })
        }
        Val::Flags(names) => json!(names),
        Val::Resource(r) => json!({ "resource": resource(r)? }),
        other => bail!("{other:?} cannot be recorded"),
    })
}

fn float(f: f64) -> Value {
    if f.is_nan() {
        json!("NaN")
    } else if f.is_infinite() {
        json!(if f > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(f)
    }
}

fn bytes_to_json(bytes: &[u8], budget: &mut Budget) -> Value {
    if bytes.len() > budget.per_value || bytes.len() > budget.remaining {
        return json!({ "omitted": bytes.len() });
    }
    budget.remaining -= bytes.len();
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "utf8": text }),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// Rebuilds a value of type `ty` from trace JSON; `resource` makes the handle numbered `n` of
/// the resource type met.
pub fn from_json(
    ty: &Type,
    json: &Value,
    resource: &mut dyn FnMut(&Type, u32) -> wasmtime::Result<ResourceAny>,
) -> wasmtime::Result<Val> {
    let wrong = || format_err!("{json} is not a {}", crate::values::type_name(ty));
    macro_rules! int {
        ($variant:ident, $t:ty) => {{
            let n = json
                .as_i64()
                .map(i128::from)
                .or_else(|| json.as_u64().map(i128::from))
                .ok_or_else(wrong)?;
            Val::$variant(<$t>::try_from(n).map_err(|_| wrong())?)
        }};
    }
    Ok(match ty {
        Type::Bool => Val::Bool(json.as_bool().ok_or_else(wrong)?),
        Type::S8 => int!(S8, i8),
        Type::U8 => int!(U8, u8),
        Type::S16 => int!(S16, i16),
        Type::U16 => int!(U16, u16),
        Type::S32 => int!(S32, i32),
        Type::U32 => int!(U32, u32),
        Type::S64 => int!(S64, i64),
        Type::U64 => int!(U64, u64),
        Type::Float32 => Val::Float32(float_from(json).ok_or_else(wrong)? as f32),
        Type::Float64 => Val::Float64(float_from(json).ok_or_else(wrong)?),
        Type::Char => {
            let s = json.as_str().ok_or_else(wrong)?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => return Err(wrong()),
            }
        }
        Type::String => Val::String(json.as_str().ok_or_else(wrong)?.to_string()),
        Type::List(list) => match (list.ty(), json) {
            (Type::U8, Value::Object(o)) => {
                let bytes = if let Some(text) = o.get("utf8").and_then(Value::as_str) {
                    text.as_bytes().to_vec()
                } else if let Some(b64) = o.get("base64").and_then(Value::as_str) {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format_err!("bad base64: {e}"))?
                } else if let Some(len) = o.get("omitted") {
                    bail!("the trace omitted this value ({len} bytes, over its size cap): it cannot be replayed")
                } else {
                    return Err(wrong());
                };
                Val::List(bytes.into_iter().map(Val::U8).collect())
            }
            (item, Value::Array(items)) => Val::List(
                items
                    .iter()
                    .map(|v| from_json(&item, v, resource))
                    .collect::<wasmtime::Result<_>>()?,
            ),
            _ => return Err(wrong()),
        },
        Type::Tuple(tuple) => {
            let items = json.as_array().ok_or_else(wrong)?;
            let types: Vec<Type> = tuple.types().collect();
            if items.len() != types.len() {
                return Err(wrong());
            }
            Val::Tuple(
                types
                    .iter()
                    .zip(items)
                    .map(|(t, v)| from_json(t, v, resource))
                    .collect::<wasmtime::Result<_>>()?,
            )
        }
        Type::Record(record) => {
            let object = json.as_object().ok_or_else(wrong)?;
            Val::Record(
                record
                    .fields()
                    .map(|field| {
                        let v = object.get(field.name).ok_or_else(|| {
                            format_err!("field `{}` missing in {json}", field.name)
                        })?;
                        Ok((field.name.to_string(), from_json(&field.ty, v, resource)?))
                    })
                    .collect::<wasmtime::Result<_>>()?,
            )
        }
        Type::Variant(variant) => {
            let (name, payload) = case_of(json).ok_or_else(wrong)?;
            let case = variant.cases().find(|c| c.name == name).ok_or_else(wrong)?;
            let payload = match (case.ty, payload) {
                (Some(t), Some(v)) => Some(Box::new(from_json(&t, v, resource)?)),
                (None, None) => None,
                _ => return Err(wrong()),
            };
            Val::Variant(name.to_string(), payload)
        }
        Type::Enum(e) => {
            let name = json.as_str().ok_or_else(wrong)?;
            if !e.names().any(|n| n == name) {
                return Err(wrong());
            }
            Val::Enum(name.to_string())
        }
        Type::Option(option) => match json {
            Value::Null => Val::Option(None),
            Value::Object(o) if o.len() == 1 && o.contains_key("some") => Val::Option(Some(
                Box::new(from_json(&option.ty(), &o["some"], resource)?),
            )),
            _ => return Err(wrong()),
        },
        Type::Result(result) => {
            let (side, v) = case_of(json).ok_or_else(wrong)?;
            let ty = match side {
                "ok" => result.ok(),
                "err" => result.err(),
                _ => return Err(wrong()),
            };
            let v = match (ty, v) {
                (Some(t), Some(v)) => Some(Box::new(from_json(&t, v, resource)?)),
                (None, None | Some(Value::Null)) => None,
                _ => return Err(wrong()),
            };
            Val::Result(if side == "ok" { Ok(v) } else { Err(v) })
        }
        Type::Flags(flags) => {
            let names = json.as_array().ok_or_else(wrong)?;
            let mut set = Vec::new();
            for name in names {
                let name = name.as_str().ok_or_else(wrong)?;
                if !flags.names().any(|n| n == name) {
                    return Err(wrong());
                }
                set.push(name.to_string());
            }
            Val::Flags(set)
        }
        Type::Own(_) | Type::Borrow(_) => {
            let n = json
                .get("resource")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(wrong)?;
            Val::Resource(resource(ty, n)?)
        }
        other => bail!("{} cannot be replayed", crate::values::type_name(other)),
    })
}

fn float_from(json: &Value) -> Option<f64> {
    match json {
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        other => other.as_f64(),
    }
}

/// `"case"` → (case, None); `{"case": payload}` → (case, Some(payload)).
fn case_of(json: &Value) -> Option<(&str, Option<&Value>)> {
    match json {
        Value::String(s) => Some((s, None)),
        Value::Object(o) if o.len() == 1 => o.iter().next().map(|(k, v)| (k.as_str(), Some(v))),
        _ => None,
    }
}

/// Replaces every resource in `val` (of type `ty`) by what `f` makes of it, in the order
/// [`to_json`] meets them.
pub fn map_resources(
    val: Val,
    ty: &Type,
    f: &mut dyn FnMut(ResourceAny, &Type) -> wasmtime::Result<ResourceAny>,
) -> wasmtime::Result<Val> {
    Ok(match (val, ty) {
        (Val::Resource(r), ty) => Val::Resource(f(r, ty)?),
        (Val::List(items), Type::List(list)) => Val::List(
            items
                .into_iter()
                .map(|v| map_resources(v, &list.ty(), f))
                .collect::<wasmtime::Result<_>>()?,
        ),
        (Val::Tuple(items), Type::Tuple(tuple)) => Val::Tuple(
            items
                .into_iter()
                .zip(tuple.types())
                .map(|(v, t)| map_resources(v, &t, f))
                .collect::<wasmtime::Result<_>>()?,
        ),
        (Val::Record(fields), Type::Record(record)) => Val::Record(
            fields
                .into_iter()
                .zip(record.fields())
                .map(|((k, v), field)| Ok((k, map_resources(v, &field.ty, f)?)))
                .collect::<wasmtime::Result<_>>()?,
        ),
        (Val::Variant(case, Some(payload)), Type::Variant(variant)) => {
            let t = variant
                .cases()
                .find(|c| c.name == case)
                .and_then(|c| c.ty)
                .ok_or_else(|| format_err!("variant case `{case}` has no payload type"))?;
            Val::Variant(case, Some(Box::new(map_resources(*payload, &t, f)?)))
        }
        (Val::Option(Some(v)), Type::Option(option)) => {
            Val::Option(Some(Box::new(map_resources(*v, &option.ty(), f)?)))
        }
        (Val::Result(Ok(Some(v))), Type::Result(result)) => {
            let t = result.ok().ok_or_else(|| format_err!("no ok type"))?;
            Val::Result(Ok(Some(Box::new(map_resources(*v, &t, f)?))))
        }
        (Val::Result(Err(Some(v))), Type::Result(result)) => {
            let t = result.err().ok_or_else(|| format_err!("no err type"))?;
            Val::Result(Err(Some(Box::new(map_resources(*v, &t, f)?))))
        }
        (val, _) => val,
    })
}
