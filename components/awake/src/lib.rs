//! The awake component: keeps the machine from sleeping while holds remain.
//!
//! A thin layer over `capbridge:host/awake`, which keeps the holds and the system's sleep
//! inhibition for the whole host; this component checks the reason before asking.

wit_bindgen::generate!({ world: "awake", generate_all });

use capbridge::host::awake as host;

/// The longest reason accepted, in characters.
const MAX_REASON_CHARS: usize = 200;

struct Awake;

impl Guest for Awake {
    fn status() -> Status {
        let status = host::status();
        Status {
            active: status.active,
            holds: status.holds,
        }
    }

    fn acquire(reason: String) -> Result<Hold, Error> {
        let reason = check_reason(&reason)?;
        host::acquire(reason)
    }

    fn release(id: String) -> Result<Hold, Error> {
        host::release(&id)
    }
}

/// The trimmed reason, or why it is not acceptable.
fn check_reason(reason: &str) -> Result<&str, Error> {
    let reason = reason.trim();
    let chars = reason.chars().count();
    if chars == 0 {
        return Err(Error::InvalidArgument(
            "`reason` is empty: say why the machine should stay awake".into(),
        ));
    }
    if chars > MAX_REASON_CHARS {
        return Err(Error::InvalidArgument(format!(
            "`reason` is {chars} characters; at most {MAX_REASON_CHARS} are allowed"
        )));
    }
    if let Some(c) = reason.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "`reason` contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(reason)
}

export!(Awake);
