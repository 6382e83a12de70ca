//! The desktop component: seed 001's desktop bridge, over the host's `capbridge:host/screen`.
//! The host reads the screen; this component shapes the answer as seed 001 does (a base64
//! PNG with its size).

wit_bindgen::generate!({ world: "desktop", generate_all });

use base64::Engine as _;
use capbridge::host::screen as host;

struct Desktop;

impl Guest for Desktop {
    fn screenshot(region: Option<Region>) -> Result<Screenshot, Error> {
        let image = host::capture(region)?;
        Ok(Screenshot {
            image_base64: base64::engine::general_purpose::STANDARD.encode(&image.png),
            width: image.width,
            height: image.height,
        })
    }

    fn ping() -> String {
        "pong".to_string()
    }
}

export!(Desktop);
