//! The generic JSON ⇄ WIT conversion, and the JSON Schema of every WIT type.
//!
//! One mapping, used for arguments, results, the command registry, MCP tools and docs:
//!
//! | WIT | JSON |
//! |---|---|
//! | `bool` | `true` / `false` |
//! | `s8` … `u64` | integer within the type's range |
//! | `f32`, `f64` | number (NaN and infinities have no JSON form and are refused) |
//! | `char` | string of exactly one character |
//! | `string` | string |
//! | `list<T>` | array |
//! | `tuple<A, B>` | array of exactly that length |
//! | `record` | object with the WIT field names; `option` fields may be omitted |
//! | `variant` | `"case"` for a case without payload, `{"case": payload}` otherwise |
//! | `enum` | `"case"` |
//! | `flags` | array of the set flag names |
//! | `option<T>` | `null` or the value (so `option<option<T>>` cannot express `some(none)`) |
//! | `result<T, E>` | `{"ok": value}` or `{"err": value}` (`null` where the side has no type) |
//! | resources, futures, streams | refused: they cannot cross JSON |

use serde_json::{json, Map, Value};
use wasmtime::component::{Type, Val};

/// A JSON value that does not fit the WIT type, naming where and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}`: expected {expected}, found {found}")]
pub struct ValueError {
    /// Where in the arguments, like `drawing.shapes[2].circle`.
    pub path: String,
    pub expected: String,
    pub found: String,
}

/// A WIT type that has no JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} cannot be passed as JSON")]
pub struct Unsupported(pub String);

fn describe(json: &Value) -> String {
    match json {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => "a string".into(),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn mismatch(path: &str, expected: impl Into<String>, json: &Value) -> ValueError {
    ValueError {
        path: path.to_string(),
        expected: expected.into(),
        found: describe(json),
    }
}

/// Converts `json` to a value of WIT type `ty`; `path` names the value in errors.
pub fn json_to_val(ty: &Type, json: &Value, path: &str) -> Result<Val, ValueError> {
    macro_rules! int {
        ($variant:ident, $t:ty, $name:literal) => {{
            let expected = || format!("{} (integer from {} to {})", $name, <$t>::MIN, <$t>::MAX);
            let n = json
                .as_i64()
                .map(i128::from)
                .or_else(|| json.as_u64().map(i128::from))
                .ok_or_else(|| mismatch(path, expected(), json))?;
            let v = <$t>::try_from(n).map_err(|_| ValueError {
                path: path.to_string(),
                expected: expected(),
                found: format!("{n}, out of range"),
            })?;
            Ok(Val::$variant(v))
        }};
    }
    match ty {
        Type::Bool => json
            .as_bool()
            .map(Val::Bool)
            .ok_or_else(|| mismatch(path, "bool", json)),
        Type::S8 => int!(S8, i8, "s8"),
        Type::U8 => int!(U8, u8, "u8"),
        Type::S16 => int!(S16, i16, "s16"),
        Type::U16 => int!(U16, u16, "u16"),
        Type::S32 => int!(S32, i32, "s32"),
        Type::U32 => int!(U32, u32, "u32"),
        Type::S64 => int!(S64, i64, "s64"),
        Type::U64 => int!(U64, u64, "u64"),
        Type::Float32 => {
            let f = json
                .as_f64()
                .ok_or_else(|| mismatch(path, "f32 (number)", json))?;
            if f.is_finite() && f.abs() > f64::from(f32::MAX) {
                return Err(mismatch(path, "f32 (number within ±3.4e38)", json));
            }
            Ok(Val::Float32(f as f32))
        }
        Type::Float64 => json
            .as_f64()
            .map(Val::Float64)
            .ok_or_else(|| mismatch(path, "f64 (number)", json)),
        Type::Char => {
            let s = json
                .as_str()
                .ok_or_else(|| mismatch(path, "char (a one-character string)", json))?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Ok(Val::Char(c)),
                _ => Err(mismatch(path, "char (a one-character string)", json)),
            }
        }
        Type::String => json
            .as_str()
            .map(|s| Val::String(s.to_string()))
            .ok_or_else(|| mismatch(path, "string", json)),
        Type::List(list) => {
            let items = json
                .as_array()
                .ok_or_else(|| mismatch(path, "list (array)", json))?;
            let item_ty = list.ty();
            items
                .iter()
                .enumerate()
                .map(|(i, item)| json_to_val(&item_ty, item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Val::List)
        }
        Type::Tuple(tuple) => {
            let types: Vec<Type> = tuple.types().collect();
            let items = json
                .as_array()
                .filter(|a| a.len() == types.len())
                .ok_or_else(|| {
                    mismatch(
                        path,
                        format!("tuple (array of {} items)", types.len()),
                        json,
                    )
                })?;
            types
                .iter()
                .zip(items)
                .enumerate()
                .map(|(i, (ty, item))| json_to_val(ty, item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Val::Tuple)
        }
        Type::Record(record) => {
            let object = json
                .as_object()
                .ok_or_else(|| mismatch(path, "record (object)", json))?;
            let fields: Vec<_> = record.fields().collect();
            if let Some(unknown) = object
                .keys()
                .find(|k| !fields.iter().any(|f| f.name == k.as_str()))
            {
                let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
                return Err(ValueError {
                    path: join(path, unknown),
                    expected: format!("no such field (fields are: {})", names.join(", ")),
                    found: "a value".into(),
                });
            }
            let mut values = Vec::with_capacity(fields.len());
            for field in &fields {
                let field_path = join(path, field.name);
                let value = match (object.get(field.name), &field.ty) {
                    (Some(v), ty) => json_to_val(ty, v, &field_path)?,
                    (None, Type::Option(_)) => Val::Option(None),
                    (None, ty) => {
                        return Err(ValueError {
                            path: field_path,
                            expected: type_name(ty),
                            found: "nothing (missing)".into(),
                        })
                    }
                };
                values.push((field.name.to_string(), value));
            }
            Ok(Val::Record(values))
        }
        Type::Variant(variant) => {
            let cases: Vec<_> = variant
                .cases()
                .map(|c| (c.name.to_string(), c.ty))
                .collect();
            let names = || {
                cases
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (name, payload) = tagged(json)
                .ok_or_else(|| mismatch(path, format!("variant (one of: {})", names()), json))?;
            let (case_name, case_ty) = cases.iter().find(|(n, _)| n == name).ok_or_else(|| {
                mismatch(path, format!("variant case (one of: {})", names()), json)
            })?;
            let case_path = join(path, case_name);
            let payload = match (case_ty, payload) {
                (None, None | Some(Value::Null)) => None,
                (None, Some(other)) => {
                    return Err(mismatch(&case_path, "no payload (null)", other))
                }
                (Some(ty), Some(p)) => Some(Box::new(json_to_val(ty, p, &case_path)?)),
                (Some(ty), None) => {
                    return Err(ValueError {
                        path: case_path,
                        expected: type_name(ty),
                        found: "no payload".into(),
                    })
                }
            };
            Ok(Val::Variant(case_name.clone(), payload))
        }
        Type::Enum(e) => {
            let names: Vec<&str> = e.names().collect();
            match json.as_str() {
                Some(s) if names.contains(&s) => Ok(Val::Enum(s.to_string())),
                _ => Err(mismatch(
                    path,
                    format!("enum (one of: {})", names.join(", ")),
                    json,
                )),
            }
        }
        Type::Option(option) => match json {
            Value::Null => Ok(Val::Option(None)),
            other => Ok(Val::Option(Some(Box::new(json_to_val(
                &option.ty(),
                other,
                path,
            )?)))),
        },
        Type::Result(result) => {
            let expected = "result ({\"ok\": value} or {\"err\": value})";
            let (side, payload) = tagged(json)
                .filter(|(_, p)| p.is_some())
                .ok_or_else(|| mismatch(path, expected, json))?;
            let payload = payload.unwrap_or(&Value::Null);
            let side_ty = match side {
                "ok" => result.ok(),
                "err" => result.err(),
                _ => return Err(mismatch(path, expected, json)),
            };
            let side_path = join(path, side);
            let value = match side_ty {
                None if payload.is_null() => None,
                None => return Err(mismatch(&side_path, "null (no value)", payload)),
                Some(ty) => Some(Box::new(json_to_val(&ty, payload, &side_path)?)),
            };
            Ok(Val::Result(if side == "ok" {
                Ok(value)
            } else {
                Err(value)
            }))
        }
        Type::Flags(flags) => {
            let names: Vec<&str> = flags.names().collect();
            let expected = || format!("flags (array of: {})", names.join(", "));
            let items = json
                .as_array()
                .ok_or_else(|| mismatch(path, expected(), json))?;
            let mut set = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if names.contains(&s) => {
                        if !set.iter().any(|x: &String| x == s) {
                            set.push(s.to_string());
                        }
                    }
                    _ => {
                        return Err(mismatch(
                            &format!("{path}[{i}]"),
                            format!("flag (one of: {})", names.join(", ")),
                            item,
                        ))
                    }
                }
            }
            Ok(Val::Flags(set))
        }
        other => Err(ValueError {
            path: path.to_string(),
            expected: type_name(other),
            found: format!("JSON ({})", Unsupported(type_name(other))),
        }),
    }
}

/// `"name"` or `{"name": payload}` (a single key).
fn tagged(json: &Value) -> Option<(&str, Option<&Value>)> {
    match json {
        Value::String(s) => Some((s.as_str(), None)),
        Value::Object(o) if o.len() == 1 => o.iter().next().map(|(k, v)| (k.as_str(), Some(v))),
        _ => None,
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Converts a WIT value to JSON.
pub fn val_to_json(val: &Val) -> Result<Value, Unsupported> {
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
        Val::Float32(f) => finite(f64::from(*f))?,
        Val::Float64(f) => finite(*f)?,
        Val::Char(c) => json!(c.to_string()),
        Val::String(s) => json!(s),
        Val::List(items) | Val::Tuple(items) | Val::FixedLengthList(items) => {
            Value::Array(items.iter().map(val_to_json).collect::<Result<_, _>>()?)
        }
        Val::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), val_to_json(v)?)))
                .collect::<Result<Map<_, _>, _>>()?,
        ),
        Val::Variant(name, None) | Val::Enum(name) => json!(name),
        Val::Variant(name, Some(payload)) => json!({ name: val_to_json(payload)? }),
        Val::Option(None) => Value::Null,
        Val::Option(Some(v)) => val_to_json(v)?,
        Val::Result(r) => {
            let (side, v) = match r {
                Ok(v) => ("ok", v),
                Err(v) => ("err", v),
            };
            let v = match v {
                Some(v) => val_to_json(v)?,
                None => Value::Null,
            };
            json!({ side: v })
        }
        Val::Flags(names) => json!(names),
        Val::Map(pairs) => Value::Array(
            pairs
                .iter()
                .map(|(k, v)| Ok(json!([val_to_json(k)?, val_to_json(v)?])))
                .collect::<Result<_, _>>()?,
        ),
        Val::Resource(_) => return Err(Unsupported("a resource handle".into())),
        Val::Future(_) => return Err(Unsupported("a future".into())),
        Val::Stream(_) => return Err(Unsupported("a stream".into())),
        Val::ErrorContext(_) => return Err(Unsupported("an error-context".into())),
    })
}

fn finite(f: f64) -> Result<Value, Unsupported> {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| Unsupported(format!("the float {f}")))
}

/// The WIT spelling of a type, for messages.
pub fn type_name(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", type_name(&l.ty())),
        Type::Tuple(t) => format!(
            "tuple<{}>",
            t.types()
                .map(|t| type_name(&t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Record(r) => format!(
            "record {{ {} }}",
            r.fields().map(|f| f.name).collect::<Vec<_>>().join(", ")
        ),
        Type::Variant(v) => format!(
            "variant {{ {} }}",
            v.cases().map(|c| c.name).collect::<Vec<_>>().join(", ")
        ),
        Type::Enum(e) => format!("enum {{ {} }}", e.names().collect::<Vec<_>>().join(", ")),
        Type::Option(o) => format!("option<{}>", type_name(&o.ty())),
        Type::Result(r) => {
            let side = |t: Option<Type>| t.map_or("_".to_string(), |t| type_name(&t));
            match (r.ok(), r.err()) {
                (None, None) => "result".into(),
                (ok, err) => format!("result<{}, {}>", side(ok), side(err)),
            }
        }
        Type::Flags(f) => format!("flags {{ {} }}", f.names().collect::<Vec<_>>().join(", ")),
        Type::Own(_) | Type::Borrow(_) => "a resource".into(),
        Type::Future(_) => "a future".into(),
        Type::Stream(_) => "a stream".into(),
        Type::ErrorContext => "an error-context".into(),
        Type::Map(_) => "map".into(),
        Type::FixedLengthList(_) => "a fixed-length list".into(),
    }
}

/// The JSON Schema (2020-12) of the JSON form of `ty`.
pub fn schema(ty: &Type) -> Result<Value, Unsupported> {
    fn int(min: i128, max: i128, name: &str) -> Value {
        json!({ "type": "integer", "minimum": min, "maximum": max, "description": name })
    }
    Ok(match ty {
        Type::Bool => json!({ "type": "boolean" }),
        Type::S8 => int(i8::MIN.into(), i8::MAX.into(), "s8"),
        Type::U8 => int(0, u8::MAX.into(), "u8"),
        Type::S16 => int(i16::MIN.into(), i16::MAX.into(), "s16"),
        Type::U16 => int(0, u16::MAX.into(), "u16"),
        Type::S32 => int(i32::MIN.into(), i32::MAX.into(), "s32"),
        Type::U32 => int(0, u32::MAX.into(), "u32"),
        Type::S64 => int(i64::MIN.into(), i64::MAX.into(), "s64"),
        Type::U64 => int(0, u64::MAX.into(), "u64"),
        Type::Float32 | Type::Float64 => json!({ "type": "number" }),
        Type::Char => json!({ "type": "string", "minLength": 1, "maxLength": 1 }),
        Type::String => json!({ "type": "string" }),
        Type::List(l) => json!({ "type": "array", "items": schema(&l.ty())? }),
        Type::Tuple(t) => {
            let items: Vec<Value> = t.types().map(|t| schema(&t)).collect::<Result<_, _>>()?;
            let n = items.len();
            json!({ "type": "array", "prefixItems": items, "minItems": n, "maxItems": n })
        }
        Type::Record(r) => object_schema(r.fields().map(|f| (f.name.to_string(), f.ty)))?,
        Type::Variant(v) => {
            let cases: Vec<Value> = v
                .cases()
                .map(|c| match c.ty {
                    None => Ok(json!({ "const": c.name })),
                    Some(ty) => Ok(json!({
                        "type": "object",
                        "properties": { c.name: schema(&ty)? },
                        "required": [c.name],
                        "additionalProperties": false
                    })),
                })
                .collect::<Result<_, _>>()?;
            json!({ "oneOf": cases })
        }
        Type::Enum(e) => json!({ "type": "string", "enum": e.names().collect::<Vec<_>>() }),
        Type::Option(o) => json!({ "anyOf": [{ "type": "null" }, schema(&o.ty())?] }),
        Type::Result(r) => {
            let side = |name: &str, ty: Option<Type>| -> Result<Value, Unsupported> {
                let inner = match ty {
                    Some(ty) => schema(&ty)?,
                    None => json!({ "type": "null" }),
                };
                Ok(json!({
                    "type": "object",
                    "properties": { name: inner },
                    "required": [name],
                    "additionalProperties": false
                }))
            };
            json!({ "oneOf": [side("ok", r.ok())?, side("err", r.err())?] })
        }
        Type::Flags(f) => json!({
            "type": "array",
            "items": { "type": "string", "enum": f.names().collect::<Vec<_>>() },
            "uniqueItems": true
        }),
        other => return Err(Unsupported(type_name(other))),
    })
}

/// The schema of a JSON object with the given fields; `option` fields are not required.
pub fn object_schema(
    fields: impl IntoIterator<Item = (String, Type)>,
) -> Result<Value, Unsupported> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, ty) in fields {
        if !matches!(ty, Type::Option(_)) {
            required.push(Value::String(name.clone()));
        }
        properties.insert(name, schema(&ty)?);
    }
    Ok(json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    }))
}
