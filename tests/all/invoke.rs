//! Invocation: the JSON ⇄ WIT conversion for every WIT type through the example component,
//! clear errors for wrong arguments, export schemas, host-call recording, deterministic replay
//! settings, and the compile cache.

use capbridge_runtime::{CallError, CallOptions, LoadEvent, Runtime};
use capbridge_tests::{component, program, shipped_policy, Fixture};
use serde_json::{json, Value};

fn echo_runtime() -> (Fixture, Runtime) {
    let fx = capbridge_tests::echo_fixture();
    let runtime = fx.runtime();
    (fx, runtime)
}

async fn call(runtime: &Runtime, function: &str, args: Value) -> Result<Value, CallError> {
    runtime
        .call("echo", function, &args, &CallOptions::default())
        .await
        .map(|o| o.result)
}

fn invalid(result: Result<Value, CallError>) -> String {
    match result {
        Err(CallError::InvalidArguments(message)) => message,
        other => panic!("expected invalid arguments, got {other:?}"),
    }
}

#[tokio::test]
async fn every_wit_type_round_trips_through_json() {
    let (_fx, runtime) = echo_runtime();
    let drawing = json!({
        "name": "house ⌂",
        "color": "green",
        "shapes": ["empty", {"circle": 7}, {"rectangle": {"x": -3, "y": 2147483647}}],
        "origin": {"x": 0, "y": -2147483648},
        "tags": [["roof", 255], ["door", 0]],
        "access": ["read", "execute"]
    });
    assert_eq!(
        call(&runtime, "echo-drawing", json!({ "drawing": drawing }))
            .await
            .unwrap(),
        drawing
    );

    let no_origin =
        json!({"name": "", "color": "red", "shapes": [], "origin": null, "tags": [], "access": []});
    assert_eq!(
        call(&runtime, "echo-drawing", json!({ "drawing": no_origin }))
            .await
            .unwrap(),
        no_origin
    );
    // An option field may be left out; it comes back as null.
    let mut omitted = no_origin.clone();
    omitted.as_object_mut().unwrap().remove("origin");
    assert_eq!(
        call(&runtime, "echo-drawing", json!({ "drawing": omitted }))
            .await
            .unwrap(),
        no_origin
    );

    let scalars = json!({
        "flag": true, "letter": "é", "small": -128, "big": 18446744073709551615u64,
        "ratio": 0.5, "precise": -1.25e300, "maybe": 65535
    });
    assert_eq!(
        call(&runtime, "echo-scalars", json!({ "values": scalars }))
            .await
            .unwrap(),
        scalars
    );

    for value in [json!({"ok": 42}), json!({"err": "nope"})] {
        assert_eq!(
            call(&runtime, "echo-result", json!({ "value": value }))
                .await
                .unwrap(),
            value
        );
    }
    assert_eq!(
        call(&runtime, "add", json!({"a": 2, "b": -5}))
            .await
            .unwrap(),
        json!({"ok": -3})
    );
    assert_eq!(
        call(&runtime, "add", json!({"a": i64::MAX, "b": 1}))
            .await
            .unwrap(),
        json!({"err": "9223372036854775807 + 1 overflows a 64-bit integer"})
    );
    assert_eq!(
        call(&runtime, "noop", json!({})).await.unwrap(),
        Value::Null
    );
    assert_eq!(
        call(&runtime, "noop", Value::Null).await.unwrap(),
        Value::Null
    );
    assert_eq!(
        call(&runtime, "reverse", json!({"text": "añb"}))
            .await
            .unwrap(),
        json!("bña")
    );
}

#[tokio::test]
async fn wrong_arguments_name_the_field_and_the_expected_type() {
    let (_fx, runtime) = echo_runtime();
    let good = json!({"name": "n", "color": "red", "shapes": [], "tags": [], "access": []});
    let with = |key: &str, value: Value| {
        let mut d = good.clone();
        d[key] = value;
        json!({ "drawing": d })
    };
    let cases = [
        (
            with("color", json!("purple")),
            "drawing.color",
            "one of: red, green, blue",
        ),
        (
            with("shapes", json!([{"circle": -1}])),
            "drawing.shapes[0].circle",
            "u32",
        ),
        (
            with("shapes", json!([{"triangle": 1}])),
            "drawing.shapes[0]",
            "circle, rectangle, empty",
        ),
        (
            with("shapes", json!([{"rectangle": {"x": 1}}])),
            "drawing.shapes[0].rectangle.y",
            "missing",
        ),
        (
            with("tags", json!([["a", 256]])),
            "drawing.tags[0][1]",
            "u8",
        ),
        (
            with("tags", json!([["a"]])),
            "drawing.tags[0]",
            "tuple (array of 2 items)",
        ),
        (
            with("access", json!(["fly"])),
            "drawing.access[0]",
            "read, write, execute",
        ),
        (
            with("name", json!(5)),
            "drawing.name",
            "expected string, found number 5",
        ),
        (
            with("origin", json!({"x": 1, "y": 2, "z": 3})),
            "drawing.origin.z",
            "no such field",
        ),
    ];
    for (args, path, expected) in cases {
        let message = invalid(call(&runtime, "echo-drawing", args.clone()).await);
        assert!(message.contains(&format!("`{path}`")), "{args}: {message}");
        assert!(message.contains(expected), "{args}: {message}");
    }
    let scalar_cases = [
        (
            json!({"letter": "ab"}),
            "values.letter",
            "one-character string",
        ),
        (json!({"small": 1.5}), "values.small", "s8"),
        (json!({"big": -1}), "values.big", "u64"),
        (json!({"flag": "true"}), "values.flag", "bool"),
        (json!({"ratio": 1e300}), "values.ratio", "f32"),
    ];
    let base =
        json!({"flag": true, "letter": "a", "small": 0, "big": 0, "ratio": 0.0, "precise": 0.0});
    for (patch, path, expected) in scalar_cases {
        let mut values = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            values[k] = v.clone();
        }
        let message = invalid(call(&runtime, "echo-scalars", json!({ "values": values })).await);
        assert!(
            message.contains(&format!("`{path}`")) && message.contains(expected),
            "{patch}: {message}"
        );
    }
    assert!(
        invalid(call(&runtime, "echo-result", json!({"value": {"maybe": 1}})).await)
            .contains("result")
    );
    assert!(
        invalid(call(&runtime, "reverse", json!({})).await).contains("missing parameter `text`")
    );
    assert!(
        invalid(call(&runtime, "reverse", json!({"text": "a", "extra": 1})).await)
            .contains("unknown parameter `extra`")
    );
    assert!(invalid(call(&runtime, "reverse", json!(["a"])).await).contains("JSON object"));
    match runtime
        .call("echo", "nonexistent", &json!({}), &CallOptions::default())
        .await
    {
        Err(CallError::UnknownFunction { hint, .. }) => assert!(hint.contains("reverse"), "{hint}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        runtime
            .call("nobody", "x", &json!({}), &CallOptions::default())
            .await,
        Err(CallError::UnknownComponent(_))
    ));
}

#[tokio::test]
async fn every_export_has_json_schemas_for_its_arguments_and_result() {
    let (_fx, runtime) = echo_runtime();
    let info = runtime.component("echo").unwrap();
    let names: Vec<&str> = info.exports.iter().map(|e| e.name.as_str()).collect();
    for expected in [
        "noop",
        "echo",
        "reverse",
        "add",
        "echo-drawing",
        "echo-scalars",
        "echo-result",
        "say",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let drawing = info
        .exports
        .iter()
        .find(|e| e.name == "echo-drawing")
        .unwrap();
    assert_eq!(drawing.signature, "echo-drawing(drawing: record { name, color, shapes, origin, tags, access }) -> record { name, color, shapes, origin, tags, access }");
    let params = drawing.params_schema.as_ref().unwrap();
    assert_eq!(params["required"], json!(["drawing"]));
    let record = &params["properties"]["drawing"];
    assert_eq!(record["additionalProperties"], json!(false));
    assert_eq!(
        record["required"],
        json!(["name", "color", "shapes", "tags", "access"]),
        "option fields are not required"
    );
    assert_eq!(
        record["properties"]["color"]["enum"],
        json!(["red", "green", "blue"])
    );
    assert_eq!(
        record["properties"]["access"]["items"]["enum"],
        json!(["read", "write", "execute"])
    );
    assert_eq!(
        record["properties"]["shapes"]["items"]["oneOf"][2],
        json!({"const": "empty"})
    );
    let add = info.exports.iter().find(|e| e.name == "add").unwrap();
    assert_eq!(
        add.result_schema.as_ref().unwrap()["oneOf"][0]["properties"]["ok"]["description"],
        json!("s64")
    );
    let noop = info.exports.iter().find(|e| e.name == "noop").unwrap();
    assert_eq!(noop.result_schema, Some(json!({"type": "null"})));
}

#[test]
fn the_second_start_compiles_nothing() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    let cache = tempfile::tempdir().unwrap();
    let config = capbridge_runtime::RuntimeConfig {
        cache_dir: cache.path().to_path_buf(),
        ..fx.config()
    };
    let load = |config| {
        let mut events = Vec::new();
        let runtime = Runtime::new(config).unwrap();
        runtime
            .load_all(&mut |e| {
                events.push(match e {
                    LoadEvent::Compiling {
                        component,
                        index,
                        total,
                    } => format!("compiling {component} {index}/{total}"),
                    LoadEvent::Loaded { component, cached } => {
                        format!("loaded {component} cached={cached}")
                    }
                    LoadEvent::Failed { component, reason } => {
                        format!("failed {component}: {reason}")
                    }
                })
            })
            .unwrap();
        events
    };
    assert_eq!(
        load(config.clone()),
        ["compiling echo 1/1", "loaded echo cached=false"]
    );
    assert_eq!(load(config.clone()), ["loaded echo cached=true"]);
    // A changed component is compiled again, never served stale code.
    fx.add("echo", &program("sandbox-probe"), None);
    assert_eq!(
        load(config),
        ["compiling echo 1/1", "loaded echo cached=false"]
    );
}
