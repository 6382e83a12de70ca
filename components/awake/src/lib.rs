//! The awake component: keeps the machine from sleeping while holds remain.
//!
//! A thin layer over `capbridge:host/awake`, which keeps the holds and the system's sleep
//! inhibition for the whole host, and checks the reason (one limit, one message, in the host).

wit_bindgen::generate!({ world: "awake", generate_all });

use capbridge::host::awake as host;

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
        host::acquire(&reason)
    }

    fn release(id: String) -> Result<Hold, Error> {
        host::release(&id)
    }
}

export!(Awake);
