//! Events probe: publishes and logs through the capbridge host interfaces.

wit_bindgen::generate!({ world: "events-probe", generate_all });

use capbridge::host::{events, log, types};

struct Probe;

impl Guest for Probe {
    fn publish(topic: String, payload: String) -> Result<(), String> {
        events::publish(&topic, &payload).map_err(|e| match e {
            types::Error::Denied(m) => format!("denied: {m}"),
            types::Error::InvalidArgument(m) => format!("invalid-argument: {m}"),
            types::Error::Unavailable(m) => format!("unavailable: {m}"),
            other => format!("{other:?}"),
        })
    }

    fn log(message: String) {
        log::write(log::Level::Info, &message);
    }
}

export!(Probe);
